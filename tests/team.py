"""A small contact-centre team in the Rocket.Chat double, and the bridge's service account.

The team lives in the package (`bridge.sandbox.team`), so `omnibridge sandbox` and the tests seed the same one.
"""

from bridge.sandbox.team import SALES, SERVICE_ROLES, SUPPORT, Account, add_service_account, seed_team

__all__ = ["SALES", "SERVICE_ROLES", "SUPPORT", "Account", "add_service_account", "seed_team"]
