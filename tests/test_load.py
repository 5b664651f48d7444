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


def test_concurrent_reservations_never_exceed_capacity(redis_url):
    import threading

    import redis

    outcomes = []

    def reserve(n):
        connection = redis.Redis.from_url(redis_url)
        outcomes.append(LoadBook(connection).reserve(f"room-{n}", [("ana", 3), ("bo", 2)]))
        connection.close()

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reserved = [o.agent_id for o in outcomes if o.outcome == "reserved"]
    assert sorted(reserved) == ["ana"] * 3 + ["bo"] * 2
    assert [o.outcome for o in outcomes].count("full") == 35


def test_a_room_is_reserved_once(redis_client):
    book = LoadBook(redis_client)
    first = book.reserve("r1", [("ana", 3)])
    again = book.reserve("r1", [("bo", 3)])
    assert (first.outcome, first.agent_id) == ("reserved", "ana")
    assert (again.outcome, again.agent_id) == ("already", "ana")
    assert book.counts() == {"ana": 1}


def test_release_undoes_only_that_reservation(redis_client):
    book = LoadBook(redis_client)
    book.reserve("r1", [("ana", 3)])
    assert not book.release("r1", "bo")
    assert book.release("r1", "ana")
    assert book.counts() == {}
    assert book.reserve("r1", [("bo", 3)]).agent_id == "bo"


def test_a_closed_room_is_not_reserved(redis_client):
    book = LoadBook(redis_client)
    book.close("r1")
    assert book.reserve("r1", [("ana", 3)]).outcome == "closed"


def test_the_taken_webhook_for_a_reserved_room_changes_nothing(redis_client):
    book = LoadBook(redis_client)
    book.reserve("r1", [("ana", 3)])
    book.assign("r1", "ana")
    assert book.counts() == {"ana": 1}


def test_pending_reservations_count_until_the_room_arrives(redis_client):
    book = LoadBook(redis_client)
    assert book.reserve_pending([("ana", 1)]).agent_id == "ana"
    assert book.counts() == {"ana": 1}
    assert book.reserve_pending([("ana", 1)]).outcome == "full"
    book.assign("r9", "ana")  # the room Rocket.Chat assigned: it takes the pending slot's place
    assert book.counts() == {"ana": 1}
    assert book.last_assigned()["ana"] > 0
