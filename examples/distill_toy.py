"""Train an EDM teacher on the two-moons toy, distil it into a consistency student (CD), and
compare 1- and 2-step student samples with the teacher at 50 NFE (a few minutes on a CPU).

    python examples/distill_toy.py [--steps 1500] [--out runs/example]
"""

import argparse

import torch

import fewstep
from fewstep import data, metrics, nets
from fewstep.distill import get_method
from fewstep.train import TrainConfig, train

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--out", default="runs/example")
args = ap.parse_args()
torch.set_num_threads(1)

cfg = TrainConfig(steps=2 * args.steps, batch_size=256, out_dir=f"{args.out}/teacher")
teacher = train(get_method("edm")(), nets.EDMPrecond(nets.MLPDenoiserNet(2)), "moons", cfg).ema

cd = get_method("cd")()
student = cd.init_student(teacher, nets.ConsistencyPrecond(nets.MLPDenoiserNet(2)))
result = train(cd, student, "moons", TrainConfig(steps=args.steps, out_dir=f"{args.out}/cd"),
               teacher=teacher)

held_out = data.get("moons").load("test", n=2000, seed=0)
z = 80.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    p = fewstep.plan("unipc_bh2", 50)
    t50 = fewstep.solvers.get("unipc_bh2")(teacher, z, p.sigmas, **p.knobs)
    gens = fewstep.generators(range(len(z)))
    one = fewstep.solvers.get("consistency")(result.ema, z, torch.tensor([80.0, 0.0]),
                                             generator=gens)
    two = fewstep.solvers.get("consistency")(result.ema, z, torch.tensor([80.0, 1.5, 0.0]),
                                             generator=fewstep.generators(range(len(z))))
for name, s in (("teacher, UniPC 50 NFE", t50), ("CD student, 1 step", one),
                ("CD student, 2 steps", two)):
    print(f"{name:24s} sliced W2 to held-out data: {metrics.sliced_wasserstein(s, held_out):.4f}")
print(f"CD training: {result.cost.seconds:.0f} s, teacher NFE {result.cost.teacher_nfe:.0f}")
