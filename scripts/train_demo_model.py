"""Train the bundled demo model (basewise.demo.MotifCNN) and write its weights and example sequence.

Random background sequence (uniform A/C/G/T) is labelled 1 when the GATA-like motif AGATAAGG is
planted at a random position and 0 otherwise; the CNN learns to detect the motif. Takes a few
seconds on a 2-core CPU and is deterministic for a given seed.

    python scripts/train_demo_model.py            # writes python/basewise/data/demo_model.pt
                                                  # and python/basewise/data/demo_sequence.json
"""

import argparse
import json
import pathlib

import numpy as np
import torch

from basewise.demo import MOTIF, MotifCNN

LENGTH = 200
DATA = pathlib.Path(__file__).resolve().parents[1] / "python" / "basewise" / "data"


def sample(rng: np.random.Generator, n: int):
    x = rng.integers(0, 4, size=(n, LENGTH))  # (n, L) background
    y = rng.random(n) < 0.5
    motif = np.array(["ACGT".index(c) for c in MOTIF])
    starts = rng.integers(0, LENGTH - len(MOTIF), size=n)
    for i in np.flatnonzero(y):
        x[i, starts[i]:starts[i] + len(MOTIF)] = motif
    onehot = np.eye(4, dtype=np.float32)[x].transpose(0, 2, 1)  # (n, 4, L)
    return torch.from_numpy(onehot), torch.from_numpy(y.astype(np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model = MotifCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(args.steps):
        x, y = sample(rng, 128)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = sample(rng, 2000)
    with torch.no_grad():
        acc = ((model(x)[:, 0, 0] > 0).float() == y).float().mean().item()
    print(f"held-out accuracy {acc:.3f}, final loss {loss.item():.4f}")
    DATA.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, DATA / "demo_model.pt")
    # Example sequence: fresh background with the motif planted near the middle.
    seq = rng.integers(0, 4, size=LENGTH)
    start = 97
    seq[start:start + len(MOTIF)] = ["ACGT".index(c) for c in MOTIF]
    text = "".join("ACGT"[i] for i in seq)
    (DATA / "demo_sequence.json").write_text(json.dumps(
        {"sequence": text, "motif_start": start, "motif": MOTIF, "seed": args.seed}, indent=1) + "\n")
    print(f"wrote {DATA / 'demo_model.pt'} and {DATA / 'demo_sequence.json'}")


if __name__ == "__main__":
    main()
