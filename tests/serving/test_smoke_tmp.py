import time
from tests.serving.conftest import SCORING
from serving.schemas import EXAMPLE_REQUEST

def test_smoke(client):
    t = time.perf_counter()
    r = client.post("/v1/score", json=EXAMPLE_REQUEST, headers=SCORING)
    print(r.status_code, r.json(), time.perf_counter() - t)
    print(client.get("/openapi.json").json()["paths"].keys())
