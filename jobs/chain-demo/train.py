"""A small training loop that survives the end of its session.

It fits y = 3x - 2 + noise by stochastic gradient descent. The state (step, weights,
segment log) lives in $ORCH_CHECKPOINT_DIR/state.json, written atomically every
CHECKPOINT_EVERY steps and when SIGTERM arrives, so a segment stopped at its session end
loses nothing and the next one resumes from the last step. Every step draws its sample
from a generator seeded by the step number, so a chain of segments ends with exactly the
weights of one uninterrupted run.

Knobs (environment): STEPS, STEP_SECONDS, CHECKPOINT_EVERY, and STEPS_PER_SESSION, which
makes each segment idle after that many steps until its session ends (to stand for a long
job in a test without waiting for it).
"""

import json
import os
import random
import signal
import sys
import time

STEPS = int(os.environ.get("STEPS", "400"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.25"))
CHECKPOINT_EVERY = int(os.environ.get("CHECKPOINT_EVERY", "20"))
STEPS_PER_SESSION = int(os.environ.get("STEPS_PER_SESSION", "0"))
CKPT = os.environ.get("ORCH_CHECKPOINT_DIR", "ckpt")
OUT = os.environ.get("ORCH_OUTPUT_DIR", "out")

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def load():
    try:
        with open(os.path.join(CKPT, "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"step": 0, "w": 0.0, "b": 0.0, "segments": []}


def save(state):
    os.makedirs(CKPT, exist_ok=True)
    tmp = os.path.join(CKPT, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(CKPT, "state.json"))


def sgd_step(state, step):
    rng = random.Random(step)
    x = rng.uniform(-1.0, 1.0)
    y = 3.0 * x - 2.0 + rng.gauss(0.0, 0.1)
    err = state["w"] * x + state["b"] - y
    lr = 0.05
    state["w"] -= lr * err * x
    state["b"] -= lr * err
    return err * err


def main():
    signal.signal(signal.SIGTERM, on_term)
    state = load()
    first = state["step"]
    deadline = os.environ.get("ORCH_DEADLINE")
    print(f"attempt {os.environ.get('ORCH_ATTEMPT')}: resuming at step {first}/{STEPS}"
          + (f", SIGTERM due at {deadline}" if deadline else ""), flush=True)
    loss = None
    done_here = 0
    while state["step"] < STEPS and not stop:
        if STEPS_PER_SESSION and done_here >= STEPS_PER_SESSION:
            time.sleep(0.05)  # a long job: keep "working" until the session ends
            continue
        loss = sgd_step(state, state["step"])
        state["step"] += 1
        done_here += 1
        if STEP_SECONDS:
            time.sleep(STEP_SECONDS)
        if state["step"] % CHECKPOINT_EVERY == 0:
            save(state)
    state["segments"].append({"attempt": int(os.environ.get("ORCH_ATTEMPT", "1")), "from": first,
                              "to": state["step"], "deadline": int(deadline) if deadline else None})
    save(state)
    if stop and state["step"] < STEPS:
        print(f"SIGTERM at step {state['step']}: checkpoint saved", flush=True)
        return 0
    os.makedirs(OUT, exist_ok=True)
    result = {"steps": state["step"], "w": round(state["w"], 6), "b": round(state["b"], 6),
              "last_loss": loss, "segments": state["segments"]}
    with open(os.path.join(OUT, "model.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"done: w={result['w']} b={result['b']} after {len(state['segments'])} segment(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
