import pytest


@pytest.mark.django_db
def test_liveness_answers_ok(client) -> None:
    response = client.get("/-/liveness")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
