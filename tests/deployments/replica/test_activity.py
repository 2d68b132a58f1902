from deployments.replica.activity import active_count


def test_a_running_session_with_a_recent_turn_counts_once():
    last = {"a": 100.0, "b": 95.0, "c": 50.0}  # c's last turn is outside the 20 s window
    assert active_count(last, busy={"a"}, now=101.0, window_s=20.0) == 2  # a (recent and busy), b
    assert active_count(last, busy={"c", "d"}, now=101.0, window_s=20.0) == 4  # a, b recent; c, d running
    assert active_count({}, busy=set(), now=0.0, window_s=20.0) == 0
