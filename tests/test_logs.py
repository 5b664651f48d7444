import io
import json
import logging

from bridge import logs
from bridge.settings import Secret, Settings


def test_configured_secrets_are_masked_in_every_part_of_a_record():
    settings = Settings(
        webhook_token=Secret("hook-secret-1234"), rocketchat_password=Secret("pw-secret-5678"), log_format="json"
    )
    stream = io.StringIO()
    logs.configure(settings, stream=stream)
    log = logging.getLogger("test.logs")
    log.warning("token %s leaked", "hook-secret-1234", extra={"detail": "pw-secret-5678"})
    try:
        raise ValueError("upstream said pw-secret-5678")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert "hook-secret-1234" not in text and "pw-secret-5678" not in text
    first = json.loads(text.splitlines()[0])
    assert first["msg"] == "token ******** leaked"
    assert first["detail"] == "********"


def test_text_format_appends_context_fields():
    stream = io.StringIO()
    logs.configure(Settings(), stream=stream)
    logging.getLogger("test.logs").info("webhook accepted", extra={"room_id": "R1", "job_id": "ev-1"})
    assert stream.getvalue().rstrip().endswith("webhook accepted room_id=R1 job_id=ev-1")
