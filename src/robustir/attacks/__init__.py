"""robustir.attacks: threat models, objectives and update rules driven by one fast batched loop.

    attack = preset("pgd", eps=8/255, steps=10)
    result = attack(model, x, ref=ground_truth)          # result.x_adv, result.loss_history (steps, N), ...
"""

from robustir.attacks.curves import RobustnessCurve, robustness_curve
from robustir.attacks.engine import Attack, AttackResult, CondThreat
from robustir.attacks.objectives import L1, MSE, CosPGD, cospgd_weight
from robustir.attacks.presets import list_presets, preset
from robustir.attacks.threat import KernelSimplexBall, L2Ball, LinfBall, Masked, ZeroMean
from robustir.attacks.transfer import TransferResult, evaluate_transfer, transfer
from robustir.attacks.updates import AdamStep, L2Step, SignStep

__all__ = ["Attack", "AttackResult", "CondThreat", "MSE", "L1", "CosPGD", "cospgd_weight", "preset", "list_presets",
           "LinfBall", "L2Ball", "Masked", "ZeroMean", "KernelSimplexBall", "SignStep", "L2Step", "AdamStep",
           "transfer", "evaluate_transfer", "TransferResult", "robustness_curve", "RobustnessCurve"]
