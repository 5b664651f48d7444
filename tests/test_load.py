from bridge.load import LoadBook


def test_assign_move_and_close(redis_client):
    book = LoadBook(redis_client)
    assert book.assign("r1", "ana") == ""
    assert book.assign("r2", "ana") == ""
    assert book.counts() == {"ana": 2}
    assert book.assign("r1", "bo") == "ana"
    assert book.counts() == {"ana": 1, "bo": 1}
    assert book.close("r2") == "ana"
    assert book.counts() == {"bo": 1}
    assert book.agent_of("r1") == "bo" and book.agent_of("r2") is None


def test_applying_an_event_twice_changes_nothing(redis_client):
    book = LoadBook(redis_client)
    book.assign("r1", "ana")
    book.assign("r1", "ana")
    book.close("r1")
    book.close("r1")
    assert book.counts() == {}


def test_a_late_taken_for_a_closed_room_is_not_counted(redis_client):
    book = LoadBook(redis_client)
    book.close("r1")
    book.assign("r1", "ana")
    assert book.counts() == {}
