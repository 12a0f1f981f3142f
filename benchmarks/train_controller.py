"""Train the shipped DDPG and TD3 controllers: real runs → surrogate → stable-baselines3.

1. **Real short runs** (in-process Flower, DP-SGD, ``controller=random``, so each device's
   spend share and knobs vary round by round): ``--runs`` runs on smartwatch with caps
   ε ∈ {1, 3, 8}, half of them with attackers (reply bursts) that appear mid-run.
2. **Surrogate** (``privacy/controller/surrogate.py``) fitted on their transitions; its
   mean absolute error on runs it was not fitted on (leave-one-run-out) is a figure, beside
   the error of predicting the training mean.
3. **Agents**: TD3 and DDPG from stable-baselines3 on ``SurrogatePrivacyEnv``, ``--timesteps``
   each, saved to ``privacy/controller/trained/{td3,ddpg}.zip`` (the files ``controller=td3`` and
   ``controller=ddpg`` load), with the surrogate's summary in ``trained/surrogate.json``. The two
   ablations the controller benchmark measures are trained too (``td3-discount-0``: γ = 0;
   ``td3-no-risk``: the risk input hidden).

``python benchmarks/train_controller.py`` reproduces the shipped files (about 15 minutes on
2 cores); ``--quick`` runs 3 short runs and 2,000 steps into ``--policies-dir`` (CI).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.noise import NormalActionNoise

from fedmosaic.clients.poisoning import malicious_partitions
from fedmosaic.config import RunConfig
from fedmosaic.privacy.accounting import poisson_plan
from fedmosaic.privacy.controller.environment import SurrogatePrivacyEnv
from fedmosaic.privacy.controller.observation import OBSERVATION_FIELDS
from fedmosaic.privacy.controller.policies import TRAINED_POLICIES
from fedmosaic.privacy.controller.surrogate import (
    SpendModel,
    Surrogate,
    fit_surrogate,
    load_transitions,
    save_transitions,
    transitions_from_summary,
)
from fedmosaic.simulation.inprocess import run_in_process

CAPS = (1.0, 3.0, 8.0)
ATTACK = {"attack": "burst", "malicious-fraction": 0.2}


def collection_runs(count: int, rounds: int, runs_dir: Path) -> list[dict[str, Any]]:
    """The real runs' overrides: caps cycle, every other run with a mid-run attack."""
    runs = []
    for index in range(count):
        overrides = {"dataset": "smartwatch", "num-server-rounds": rounds, "dp": True,
                     "dp-epsilon-budget": CAPS[index % len(CAPS)], "controller": "random",
                     "seed": 100 + index, "fraction-evaluate": 0.0,
                     "out-dir": str(runs_dir), "run-name": f"collect-{index}"}
        if index % 2:
            overrides.update(ATTACK, **{"attack-start-round": rounds // 2 + 1})
        runs.append(overrides)
    return runs


def collect(count: int, rounds: int, runs_dir: Path) -> tuple[list, float, list[float]]:
    """Run the collection runs; their transitions, mean initial accuracy and wall seconds."""
    transitions, initial, seconds = [], [], []
    for overrides in collection_runs(count, rounds, runs_dir):
        started = time.perf_counter()
        config = run_in_process(overrides)
        seconds.append(time.perf_counter() - started)
        summary = json.loads((config.run_dir() / "summary.json").read_text())
        attacked = malicious_partitions(config.num_clients, config.malicious_fraction,
                                        config.seed) if config.attack != "none" else frozenset()
        transitions += transitions_from_summary(summary, config.run_name, attacked,
                                                config.attack_start_round)
        initial.append(summary["initial_accuracy"])
        print(f"{config.run_name}: final accuracy {summary['final_accuracy']:.3f}, "
              f"{seconds[-1]:.0f} s")
    return transitions, float(np.mean(initial)), seconds


def spend_model(rounds_config: RunConfig) -> SpendModel:
    """The exact spend of a typical smartwatch device (its median training-set size)."""
    from fedmosaic.task import cached_dataset

    dataset = cached_dataset(rounds_config)
    sizes = [len(dataset.partition(p)[0]) for p in range(rounds_config.num_clients)]
    rate, steps, _ = poisson_plan(int(np.median(sizes)), rounds_config.batch_size,
                                  rounds_config.local_epochs, 1)
    return SpendModel(rate, steps, rounds_config.delta)


def train_agent(algorithm: str, env: SurrogatePrivacyEnv, timesteps: int, seed: int,
                gamma: float = 0.95) -> Any:
    """TD3 or DDPG (stable-baselines3) with Gaussian exploration noise, small MLPs."""
    noise = NormalActionNoise(mean=np.zeros(4), sigma=0.3 * np.ones(4))
    agent = {"td3": TD3, "ddpg": DDPG}[algorithm](
        "MlpPolicy", env, learning_rate=1e-3, buffer_size=50_000, learning_starts=500,
        batch_size=128, gamma=gamma, action_noise=noise, seed=seed, device="cpu",
        policy_kwargs={"net_arch": [64, 64]}, verbose=0)
    return agent.learn(total_timesteps=timesteps)


def evaluate_agent(agent: Any, env: SurrogatePrivacyEnv, episodes: int = 50) -> float:
    """Mean episode return of the deterministic actor on fresh scenarios."""
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=10_000 + episode)
        done, total = False, 0.0
        while not done:
            action, _ = agent.predict(observation, deterministic=True)
            observation, reward, done, _, _ = env.step(action)
            total += reward
        returns.append(total)
    return float(np.mean(returns))


def constant_return(env: SurrogatePrivacyEnv, episodes: int = 50) -> float:
    """Mean episode return of the even (static) spend, the agents' reference."""
    static = type("Static", (), {"predict": lambda self, o, deterministic: (
        np.zeros(4, dtype=np.float32), None)})()
    return evaluate_agent(static, env, episodes)


def main() -> None:
    """Collect, fit, train, save (module docstring)."""
    parser = common.make_parser("train_controller", __doc__)
    parser.add_argument("--runs", type=int, default=None, help="real collection runs")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per real run")
    parser.add_argument("--timesteps", type=int, default=None, help="agent training steps")
    parser.add_argument("--transitions", type=Path, default=None,
                        help="fit on these saved transitions instead of running the real runs "
                             "again (with --initial-accuracy)")
    parser.add_argument("--initial-accuracy", type=float, default=None,
                        help="the runs' mean initial accuracy, with --transitions")
    parser.add_argument("--policies-dir", type=Path, default=TRAINED_POLICIES,
                        help="where the trained policies go (default: the shipped folder)")
    args = parser.parse_args()
    count = args.runs or (3 if args.quick else 12)
    rounds = args.rounds or (4 if args.quick else 10)
    timesteps = args.timesteps or (2_000 if args.quick else 30_000)
    runs_dir = common.run_folder("train_controller", args.runs_dir)
    if args.transitions is not None:
        if args.initial_accuracy is None:
            parser.error("--transitions needs --initial-accuracy")
        transitions, initial, seconds = load_transitions(args.transitions), (
            args.initial_accuracy), []
    else:
        transitions, initial, seconds = collect(count, rounds, runs_dir)
    save_transitions(transitions, args.policies_dir / "transitions.jsonl")
    surrogate: Surrogate = fit_surrogate(transitions, initial)
    spend = spend_model(RunConfig.from_mapping({"dataset": "smartwatch"}))
    returns: dict[str, float] = {}
    variants = {"td3": ("td3", 0.95, True), "ddpg": ("ddpg", 0.95, True),
                "td3-discount-0": ("td3", 0.0, True), "td3-no-risk": ("td3", 0.95, False)}
    env_settings = {"num_rounds": 10, "caps": CAPS}
    for name, (algorithm, gamma, use_risk) in variants.items():
        env = SurrogatePrivacyEnv(surrogate, spend, use_risk=use_risk, **env_settings)
        started = time.perf_counter()
        agent = train_agent(algorithm, env, timesteps, seed=args.seed or 0, gamma=gamma)
        returns[name] = evaluate_agent(agent, env)
        agent.save(args.policies_dir / f"{name}.zip")
        if not use_risk:  # the actor never saw the risk: hide it when it acts in a run
            (args.policies_dir / f"{name}.json").write_text(json.dumps(
                {"hidden_inputs": [f for f in OBSERVATION_FIELDS if f.startswith("risk")]}))
        print(f"{name}: {time.perf_counter() - started:.0f} s, surrogate return "
              f"{returns[name]:.3f}")
    returns["static"] = constant_return(SurrogatePrivacyEnv(surrogate, spend, **env_settings))
    (args.policies_dir / "surrogate.json").write_text(json.dumps({
        **surrogate.summary(), "initial_accuracy": initial, "timesteps": timesteps,
        "surrogate_returns": returns,
        "spend_model": {"sample_rate": spend.sample_rate, "steps": spend.steps,
                        "delta": spend.delta}}, indent=2) + "\n")
    errors = surrogate.held_out_error
    figures = {
        "surrogate_accuracy_gain_mae": errors["accuracy_gain"],
        "surrogate_accuracy_gain_mae_of_mean": errors["accuracy_gain_baseline"],
        "surrogate_leakage_mae": errors["leakage"],
        "surrogate_leakage_mae_of_mean": errors["leakage_baseline"],
        **{f"surrogate_return_{k.replace('-', '_')}": v for k, v in returns.items()},
    }
    common.print_table("controller training", list(figures.items()))
    common.write_result(args.out, "train_controller", args.quick, figures,
                        baseline={"predict_the_training_mean": {
                            "accuracy_gain": errors["accuracy_gain_baseline"],
                            "leakage": errors["leakage_baseline"]},
                            "static_surrogate_return": returns["static"]},
                        config={"runs": count, "rounds": rounds, "timesteps": timesteps,
                                "caps": CAPS, "attack": ATTACK},
                        run_seconds=seconds)


if __name__ == "__main__":
    main()
