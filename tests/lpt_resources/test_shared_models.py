"""The per-process model registry both in-process engines share."""

import threading
import time
from dataclasses import dataclass

from lpt_resources.engines.shared import SharedModels


@dataclass
class Handle:
    key: str
    load_seconds: float = 0.0
    refs: int = 0


def test_engines_asking_at_once_load_once_and_the_last_release_closes():
    loads, closes = [], []

    def load(key: str) -> Handle:
        loads.append(key)
        time.sleep(0.05)  # a slow load: every other thread arrives while it runs
        return Handle(key)

    models = SharedModels(load, closes.append)
    got: list[Handle] = []
    threads = [threading.Thread(target=lambda: got.append(models.acquire("m"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["m"] and len({id(h) for h in got}) == 1 and got[0].refs == 8
    for _ in range(7):
        models.release("m")
    assert closes == [] and models.snapshot() == {"m": got[0]}
    models.release("m")
    assert closes == [got[0]] and models.snapshot() == {}
    models.release("m")  # an extra release is harmless
    assert models.acquire("m") is not got[0] and loads == ["m", "m"]  # loads again when asked


def test_close_all_closes_in_use_models_and_swallows_their_errors():
    def refuse(handle: Handle) -> None:
        raise RuntimeError("already gone")

    models = SharedModels(Handle, refuse)
    models.acquire("a")
    models.acquire("b")
    models.close_all()
    assert models.snapshot() == {}


def test_a_parked_model_serves_the_next_user_and_goes_when_another_loads():
    """A stage parks its model when the next stage uses the same settings; a model of other
    settings unloads every parked one first, so two are never loaded at once."""
    loads, closes = [], []
    models = SharedModels(lambda key: loads.append(key) or Handle(key), closes.append)
    first = models.acquire("ask")
    models.release("ask", park=True)
    assert models.acquire("ask") is first and loads == ["ask"] and closes == []
    models.release("ask", park=True)
    other = models.acquire("reasoner")
    assert closes == [first] and models.snapshot() == {"reasoner": other}
    models.release("reasoner", park=True)
    models.unpark()
    assert closes == [first, other] and models.snapshot() == {}
