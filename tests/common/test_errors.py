from common import errors


def test_round_trip_through_response_keeps_class_and_retry() -> None:
    exc = errors.from_response(507, {"code": "throttled", "message": "cache full"}, "3")
    assert isinstance(exc, errors.Throttled) and exc.retriable and exc.retry_after_s == 3.0
    exc2 = errors.from_response(409, {"code": "stale_generation", "message": "old"})
    assert isinstance(exc2, errors.StaleGeneration) and not exc2.retriable
    exc3 = errors.from_response(400, {"code": "malformed_batch", "message": "bad"})
    assert isinstance(exc3, errors.MalformedBatch)


def test_unknown_statuses_map_by_range() -> None:
    assert errors.from_response(502, "gateway").retriable
    assert not errors.from_response(418, {}).retriable
