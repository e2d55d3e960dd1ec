"""Mutation testing of the core: how many planted bugs the relevant tests catch, per module.

    python -m benchmarks.mutation                       # every group, report in runs/mutation/
    python -m benchmarks.mutation --group losses_advantages --group geneval_rules
    make mutation                                       # the same as the first line

For each group below, the tracked files of the repository are copied to OUT/work/GROUP (the
working tree is never touched), mutmut (3.x) plants its mutants in the group's files (only in the
listed functions where a group names some) and runs, for every mutant, the group's tests that call
the mutated function (mutmut's own per-function selection), stopping at the first failure. A
mutant is *killed* when a test fails or times out, *survived* when every test passes, *no tests*
when no selected test reaches it (counted as survived).

benchmarks/mutation_equivalent.toml lists the mutants reviewed as equivalent: each names the
mutant, the exact line of its diff and why it changes no output. A listed mutant whose diff no
longer matches (the code moved) counts as an ordinary survivor again, so the list cannot go stale
silently. The score of a module is killed / (mutants - equivalent - device only), where *device only* is a mutant that only drops a
`device=` argument: on one device it changes nothing (see device_only).

The report (OUT/report.md, OUT/report.json) gives the score per module and every survivor's diff.
Not part of `make test`: every group together takes hours on 2 CPU cores (docs/testing.md gives each
group's time); run a group at a time and go on with --recheck.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.toml"
# lines whose mutants are not behaviour: the wording of an error or log message (a raise, a print,
# a warning, or a line that is nothing but a string continuing such a message)
SKIP_PATTERNS = [r"^\s*raise ", r"^\s*(self\.)?(acc\.)?print\(", r"^\s*warnings\.warn\(", r"^\s*log(ger)?\.\w+\(",
                 r"""^\s*[rf]?"[^"]*"\)*[,;]?\s*$""", r"""^\s*[rf]?'[^']*'\)*[,;]?\s*$"""]
ALSO_COPY = ("configs",)  # data the tests read besides the packages, copied next to the mutants
DEVICE_ARG = re.compile(r",?\s*device=[\w.]+(\[[^\]]*\])?")
DEVICE_POSITIONAL = re.compile(r"\.to\((dev|device|[\w.]+\.device)\)")
DEVICE_VARIABLE = re.compile(r"^(\s*(?:dev|device)\s*=\s*)[\w.]+\.device(\s*)$")


@dataclasses.dataclass(frozen=True)
class Group:
    files: tuple[str, ...]           # what is mutated
    tests: tuple[str, ...]           # pytest arguments selecting the relevant tests
    functions: tuple[str, ...] = ()  # mutmut name globs, when only part of a file is in scope
    # tests that reach the group's code in child processes (torchrun): mutmut records which tests call
    # a function in its own process only, so it never runs these against the functions' mutants; the
    # tool runs them against the survivors of `spawn_functions` (name globs) itself (spawn_check)
    spawn_tests: tuple[str, ...] = ()
    spawn_functions: tuple[str, ...] = ()


GROUPS: dict[str, Group] = {
    "samplers": Group(
        files=("samplers/*.py",),
        tests=("tests/samplers", "tests/flowalign/test_nft.py::test_dpm2_rollout_equals_the_reference_solver",
               "tests/flowalign/test_losses_advantages.py")),
    "losses_advantages": Group(
        files=("flowalign/losses.py", "flowalign/advantages.py"),
        tests=("tests/flowalign/test_losses_advantages.py", "tests/flowalign/test_nft.py", "-k",
               "not process and not iteration and not resume")),
    "algorithms": Group(
        files=("flowalign/algorithms/*.py",),
        tests=("tests/flowalign/test_flow_grpo_estimator.py", "tests/flowalign/test_dense_grpo.py",
               "tests/flowalign/test_branch_grpo.py", "tests/flowalign/test_fidelity_flow_grpo.py",
               "tests/flowalign/test_fidelity_branch_grpo.py", "tests/flowalign/test_nft.py",
               "tests/flowalign/test_core_invariants.py",
               "tests/test_architecture.py::test_one_registry_whose_schemas_validate_themselves",
               "tests/test_architecture.py::test_shipped_configs_load", "-k", "not two_process and not torchrun")),
    "trainer_checkpoint": Group(
        files=("flowalign/trainer.py", "flowalign/ema.py"),
        functions=("flowalign.trainer.x_load_state*", "flowalign.trainer.x_numpy_rng_state*",
                   "flowalign.trainer.x_set_numpy_rng_state*", "flowalign.trainer.x_run_dir_in_use*",
                   "flowalign.trainer.x_check_fresh_run_dir*", "flowalign.trainer.x__checkpoints*",
                   "flowalign.trainer.x__flat*", "flowalign.trainer.x_resume_checkpoint*",
                   "flowalign.trainer.xǁTrainerǁsave_checkpoint*", "flowalign.trainer.xǁTrainerǁresume_*",
                   "flowalign.trainer.xǁTrainerǁresume*", "flowalign.trainer.xǁTrainerǁ_apply_lr*",
                   "flowalign.trainer.xǁTrainerǁ_truncate_metrics*", "flowalign.ema.*"),
        tests=("tests/flowalign/test_resume_rules.py", "tests/flowalign/test_ema.py",
               "tests/flowalign/test_core_invariants.py", "tests/flowalign/test_train.py",
               "tests/flowalign/test_nft.py::test_resume_is_bit_identical_with_the_old_policy_restored",
               "tests/reward_models/test_adversarial.py::test_engine_trains_the_discriminator_and_checkpoints_it", "-k",
               "resume or save or torn or crafted or ema or rule or checkpoint"),
        # the sharded (run.sharding=fsdp2) checkpoint is written and read only with 2 processes
        spawn_tests=("tests/flowalign/test_fsdp2.py::test_fsdp2_kill_and_resume_is_bit_identical_to_a_straight_run",
                     "tests/flowalign/test_fsdp2.py::test_fsdp2_full_fine_tuning_equals_one_unsharded_process"),
        spawn_functions=("flowalign.trainer.xǁTrainerǁsave_checkpoint*", "flowalign.trainer.xǁTrainerǁresume__*")),
    "geneval_rules": Group(
        files=("reward_models/geneval_rules.py",),
        tests=("tests/reward_models/test_geneval_rules_fidelity.py", "tests/reward_models/test_geneval_rules_details.py")),
    "reward_objectives": Group(
        files=("reward_models/adversarial.py", "reward_models/adversarial_pickscore.py", "reward_models/prompt_echo.py",
               "reward_models/weighted.py", "flowalign/noise_opt.py"),
        functions=("reward_models.adversarial.x_unit*", "reward_models.adversarial.x_pick_patches*",
                   "reward_models.adversarial.x_adversarial_scores*", "reward_models.adversarial.x_reference_hinge_loss*",
                   "reward_models.adversarial.x_normalized_hinge_loss*", "reward_models.adversarial.x_load_image*",
                   "reward_models.adversarial.x_load_reference_map*", "reward_models.adversarial.x_reference_batch*",
                   "reward_models.adversarial_pickscore.*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁscores*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁ__call__*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁhead_step*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁtrains_generator*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁreal_images*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁupdate*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁstate_dict*",
                   "reward_models.adversarial.xǁAdversarialDinoRewardǁload_state_dict*",
                   "reward_models.prompt_echo.x_query_prefix*", "reward_models.prompt_echo.x_answer_texts*",
                   "reward_models.prompt_echo.x_answer_token_losses*",
                   "reward_models.prompt_echo.xǁPromptEchoRewardǁtoken_losses*",
                   "reward_models.prompt_echo.xǁPromptEchoRewardǁ__call__*",
                   "reward_models.weighted.x_weighted_sum*", "reward_models.weighted.xǁWeightedRewardǁ__call__*",
                   "reward_models.weighted.xǁWeightedRewardǁstate_dict*",
                   "reward_models.weighted.xǁWeightedRewardǁload_state_dict*",
                   "flowalign.noise_opt.x_chi_regulariser*", "flowalign.noise_opt.x_weighted_reward*",
                   "flowalign.noise_opt.x_optimize_noise*", "flowalign.noise_opt.x_differentiable_sample*"),
        tests=("tests/reward_models/test_objective_coefficients.py", "tests/reward_models/test_adversarial.py",
               "tests/reward_models/test_adversarial_pickscore.py",
               "tests/reward_models/test_prompt_echo.py", "tests/reward_models/test_rewards.py",
               "tests/flowalign/test_reno.py"),
        # the defaults are hub ids: loading them offline needs HF_HUB_CACHE set before the import
        spawn_tests=("tests/reward_models/test_adversarial_pickscore.py::"
                     "test_hub_id_defaults_load_pickscore_and_the_laion_processor",),
        spawn_functions=("reward_models.adversarial_pickscore.xǁAdversarialPickScoreRewardǁ__init__*",)),
}


def module_of(mutant: str) -> str:
    """'flowalign.trainer.xǁTrainerǁresume__mutmut_3' -> 'flowalign/trainer.py'"""
    dotted = mutant.split("__mutmut_")[0]
    path = "/".join(dotted.split(".")[:-1])
    return path + "/__init__.py" if (ROOT / path).is_dir() else path + ".py"


def load_equivalent(path: pathlib.Path = EQUIVALENT) -> dict[str, dict]:
    """{mutant name: {"line": the '+' line of its diff, "why": the reason}}"""
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    out = {}
    for entry in data.get("mutant", []):
        missing = {"name", "line", "why"} - set(entry)
        if missing:
            raise ValueError(f"{path}: an entry {entry!r} lacks {sorted(missing)}; each equivalent mutant names "
                             "its mutant, the '+' line of its diff and why it changes no output.")
        out[entry["name"]] = entry
    return out


def diff_added_lines(diff: str) -> list[str]:
    return [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]


def device_only(diff: str) -> bool:
    """A mutant that only drops a `device=` argument or sets it to None, turns `.to(dev)` into
    `.to(None)`, or `dev = x.device` into `dev = None`: on a machine with one device every tensor is
    already there, so it changes no output where these tests run (a GPU run of the same tests is
    what would catch it)."""
    minus = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if len(minus) != 1 or len(plus) != 1:
        return False

    def norm(line: str) -> str:
        return re.sub(r"\s+", "", DEVICE_ARG.sub("", line)).replace(",)", ")")

    if "device=" in minus[0] and norm(minus[0]) == norm(plus[0]):
        return True
    # the positional forms: `.to(dev)` -> `.to(None)`, and `dev = x.device` -> `dev = None`
    for m in DEVICE_POSITIONAL.finditer(minus[0]):
        if minus[0][:m.start()] + ".to(None)" + minus[0][m.end():] == plus[0]:
            return True
    return bool(DEVICE_VARIABLE.match(minus[0])) and plus[0] == DEVICE_VARIABLE.sub(r"\1None", minus[0])


def reviewed(diff: str, entry: dict | None) -> str | None:
    """Why a surviving mutant does not count against its module: "device_only", "equivalent" (its
    entry in the list still matches its diff), or None."""
    if device_only(diff):
        return "device_only"
    if entry is not None and entry["line"].strip() in diff_added_lines(diff):
        return "equivalent"
    return None


KILLED = ("killed", "timeout", "caught by type check", "segfault")  # mutmut's statuses that detect a mutant


def score(statuses: dict[str, str], diffs: dict[str, str], equivalent: dict[str, dict]) -> dict:
    """Per module: counts and the score over non-equivalent mutants. `statuses` maps a mutant to
    killed / survived / no tests / timeout / ...; an equivalent entry applies only while its line
    is still the mutant's diff."""
    per: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    survivors: dict[str, list] = defaultdict(list)
    for name, status in sorted(statuses.items()):
        mod = module_of(name)
        per[mod]["mutants"] += 1
        if status in KILLED:
            per[mod]["killed"] += 1
            continue
        why = reviewed(diffs.get(name, ""), equivalent.get(name))
        if why is not None:
            per[mod][why] += 1
            continue
        per[mod]["survived"] += 1
        survivors[mod].append({"name": name, "status": status, "diff": diffs.get(name, "")})
    table = {}
    for mod, c in sorted(per.items()):
        denom = c["mutants"] - c["equivalent"] - c["device_only"]
        table[mod] = {"mutants": c["mutants"], "killed": c["killed"], "equivalent": c["equivalent"],
                      "device_only": c["device_only"],
                      "survived": c["survived"], "score": round(c["killed"] / denom, 4) if denom else 1.0}
    return {"modules": table, "survivors": dict(survivors)}


def copy_repo(dst: pathlib.Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for rel in files.decode().split("\0"):
        if rel and (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)


def mutmut_section(group: Group) -> str:
    packages = sorted({f.split("/")[0] for f in group.files})
    lines = ["", "[tool.mutmut]",
             f"source_paths = {json.dumps(packages)}",
             f"only_mutate = {json.dumps(list(group.files))}",
             f"pytest_add_cli_args_test_selection = {json.dumps(list(group.tests))}",
             # tests run inside mutants/, which holds only the source packages and tests/: without the
             # shipped configs a test that loads every configs/*.yaml would load none and pass
             f"also_copy = {json.dumps(list(ALSO_COPY))}",
             'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]',
             'process_isolation = "forkserver"',
             f"do_not_mutate_patterns = {json.dumps(SKIP_PATTERNS)}",
             "use_git_change_detection = false", ""]
    return "\n".join(lines)


def read_statuses(work: pathlib.Path, patterns: tuple[str, ...]) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in (work / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
                out[name] = status_by_exit_code[code]
    return out


def source_hashes(group: Group) -> dict[str, str]:
    """{file: hash} of the group's mutated files: mutmut numbers mutants within each function in
    source order, so an earlier result applies to a later run only where its file is unchanged."""
    out = {}
    for pattern in group.files:
        for f in sorted(ROOT.glob(pattern)):
            out[str(f.relative_to(ROOT))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


def child_env(children: int) -> dict[str, str]:
    """The environment of mutmut and its test processes: each of the `children` parallel test
    processes gets its share of the cores as torch threads (cores // children, at least one).
    Without it every child starts one thread per core, and two children on two cores run slower
    together than one alone."""
    threads = str(max(1, (os.cpu_count() or 1) // max(1, children)))
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


SPAWN_TIMEOUT = 900  # seconds for the spawn tests against one mutant (a hang counts as killed, as in mutmut)


def spawn_check(work: pathlib.Path, group: Group, candidates: list[str], env: dict[str, str]) -> list[str]:
    """The candidates (surviving mutants of `group.spawn_functions`) that `group.spawn_tests` kill,
    run one mutant at a time in mutmut's mutants/ folder with MUTANT_UNDER_TEST in the environment
    (the child processes inherit it, and mutmut's trampolines read it). The tests must pass with no
    mutant active first, or every mutant would look killed."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *group.spawn_tests]
    cwd = work / "mutants"
    clean = subprocess.run(cmd, cwd=cwd, env={**env, "MUTANT_UNDER_TEST": ""}, capture_output=True, text=True)
    if clean.returncode != 0:
        raise RuntimeError(f"the spawn tests fail with no mutant active in {cwd} (exit {clean.returncode}): "
                           f"{(clean.stdout + clean.stderr)[-2000:]}")
    killed = []
    for i, m in enumerate(candidates):
        try:
            rc = subprocess.run(cmd, cwd=cwd, env={**env, "MUTANT_UNDER_TEST": m}, capture_output=True,
                                timeout=SPAWN_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        print(f"[mutation] spawn tests {i + 1}/{len(candidates)}: {m} {'killed' if rc != 0 else 'survived'}",
              flush=True)
        if rc != 0:
            killed.append(m)
    return killed


def run_group(name: str, group: Group, out: pathlib.Path, children: int, collect_only: bool = False,
              previous: dict | None = None, survivors_only: bool = False) -> dict:
    """Run mutmut on one group. With `previous` (this group's earlier result), the survivors and
    unchecked mutants of its unchanged files run again with the current tests, their kills are kept,
    and every mutant of a changed file runs again."""
    work = out / "work" / name
    # the sources as mutated: a file edited while mutmut runs must count as changed at the next --recheck
    hashes = source_hashes(group)
    mutmut = str(pathlib.Path(sys.executable).with_name("mutmut"))
    rc, seconds = 0, 0.0
    names, kept, old_diffs = list(group.functions), {}, {}
    if previous is not None:
        old_hashes, now = previous.get("source_hashes", {}), hashes
        changed = {f for f in now if old_hashes.get(f) != now[f]}
        if changed == set(now):
            raise ValueError(f"--recheck: every source of group {name!r} changed since its last run (mutants are "
                             "numbered anew); run the group in full.")
        # a changed file's earlier results are void: all its mutants run again
        in_scope = (lambda k: any(fnmatch.fnmatch(k, p) for p in group.functions)) if group.functions else (lambda k: True)
        previous = {**previous, "statuses": {k: v for k, v in previous["statuses"].items()
                                             if module_of(k) not in changed and in_scope(k)}}
        # survivors already reviewed (device only, or listed as equivalent) cannot be killed: they keep
        # their status and diff instead of running every test that reaches them again
        eq, old_diffs = load_equivalent(), previous.get("diffs", {})
        kept = {k: v for k, v in previous["statuses"].items() if v not in KILLED and v != "not checked"
                and reviewed(old_diffs.get(k, ""), eq.get(k)) is not None}
        skip = KILLED + (("not checked",) if survivors_only else ())
        names = sorted(k for k, v in previous["statuses"].items() if v not in skip and k not in kept)
        for f in sorted(changed):
            mod = f[:-3].replace("/", ".")
            names += [p for p in group.functions if p.startswith(mod + ".")] or [mod + ".*"]
    if not collect_only and (previous is None or names):
        copy_repo(work)
        with open(work / "pyproject.toml", "a") as f:
            f.write(mutmut_section(group))
        t0 = time.time()
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run([mutmut, "run", "--max-children", str(children), *names], cwd=work,
                                stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(children)).returncode
        seconds = time.time() - t0
    elif collect_only and not (work / "mutants").is_dir():
        raise FileNotFoundError(f"--collect-only: {work} holds no mutmut run of group {name!r}; run it first.")
    statuses = read_statuses(work, tuple(names)) if (work / "mutants").is_dir() else {}
    checked = {k: v for k, v in statuses.items() if v != "not checked"}
    if previous is not None:
        # a mutant this run did not reach (an interrupted recheck) keeps its earlier status: a survivor
        # stays a survivor until a run kills it
        statuses = {**previous["statuses"], **checked,
                    **{k: v for k, v in statuses.items() if v == "not checked" and k not in previous["statuses"]}}
        checked = {k: v for k, v in statuses.items() if v != "not checked"}
    if rc != 0 or not checked:
        raise RuntimeError(f"mutmut on group {name!r} exited {rc} with {len(checked)} mutants checked; "
                           f"see {out / (name + '.log')}")
    diffs = {}
    for m, st in checked.items():
        if m in kept:
            diffs[m] = old_diffs[m]
        elif st not in KILLED:
            diffs[m] = subprocess.run([mutmut, "show", m], cwd=work, capture_output=True, text=True).stdout
    eq = load_equivalent()
    spawn = sorted(m for m, st in checked.items() if group.spawn_tests and st not in KILLED
                   and any(fnmatch.fnmatch(m, p) for p in group.spawn_functions) and reviewed(diffs[m], eq.get(m)) is None)
    if spawn and not collect_only:
        for m in spawn_check(work, group, spawn, child_env(1)):
            checked[m] = statuses[m] = "killed"
            diffs.pop(m)
    result = score(checked, diffs, eq)
    result["seconds"] = round(seconds + (previous or {}).get("seconds", 0.0), 1)
    result["statuses"] = {**statuses, **checked}  # with the unchecked ones, which a --recheck runs
    result["diffs"] = diffs  # of every mutant not killed, so the report can be scored again
    result["source_hashes"] = hashes
    return result


def rescore(result: dict, equivalent: dict | None = None) -> dict:
    """A group's stored result scored again against the current equivalent list (its statuses and
    the diffs of its survivors are kept): for after reviewing survivors, without running mutmut."""
    checked = {k: v for k, v in result["statuses"].items() if v != "not checked"}
    eq = load_equivalent() if equivalent is None else equivalent
    return {**result, **score(checked, result.get("diffs", {}), eq)}


def pack_statuses(statuses: dict[str, str]) -> dict[str, dict[str, list[int]]]:
    """{'m.x_f__mutmut_3': 'killed', ...} -> {'m.x_f': {'killed': [3, ...]}}: the same facts in a
    fraction of the bytes, for the kept json."""
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for name, status in sorted(statuses.items()):
        function, _, number = name.rpartition("__mutmut_")
        out[function][status].append(int(number))
    return {f: {s: sorted(n) for s, n in v.items()} for f, v in sorted(out.items())}


def unpack_statuses(packed: dict[str, dict[str, list[int]]]) -> dict[str, str]:
    return {f"{function}__mutmut_{n}": status for function, by in packed.items()
            for status, numbers in by.items() for n in numbers}


def slim_report(results: dict) -> dict:
    """What benchmarks/results keeps of a report: the scores, seconds, the number of unchecked
    mutants, the survivors' names, and what a later --recheck or --rescore needs (every mutant's
    status, packed; the diffs of those not killed; the hashes of the mutated files)."""
    return {"command": results["command"],
            "groups": {g: {"modules": r["modules"], "seconds": r["seconds"],
                           "unchecked": sum(v == "not checked" for v in r.get("statuses", {}).values()),
                           "survivors": {m: [s["name"] for s in v] for m, v in r["survivors"].items()},
                           "statuses": pack_statuses(r.get("statuses", {})),
                           "diffs": r.get("diffs", {}), "source_hashes": r.get("source_hashes", {})}
                       for g, r in results["groups"].items()}}


def save_kept(path: pathlib.Path, slim: dict) -> None:
    """Write the kept json. A group it held that this report lacks keeps its entry (with that run's
    command), so running some groups never drops the others' scores."""
    if path.is_file():
        old = json.loads(path.read_text())
        for g, r in old.get("groups", {}).items():
            if g not in slim["groups"]:
                slim["groups"][g] = {**r, "command": r.get("command", old.get("command", ""))}
    path.write_text(json.dumps(slim, indent=1, ensure_ascii=False))


def unslim_report(slim: dict) -> dict:
    """A kept json read back as a report: each group's statuses unpacked and its survivors scored
    again, so --recheck and --rescore can start from it."""
    groups = {}
    for g, r in slim.get("groups", {}).items():
        if "statuses" not in r:  # written before the kept json carried statuses: only a new run can go on
            print(f"[mutation] {g}: the kept json has its scores but no statuses; run the group again to go on "
                  "from it.", flush=True)
            continue
        full = {"seconds": r["seconds"], "statuses": unpack_statuses(r["statuses"]), "diffs": r.get("diffs", {}),
                "source_hashes": r.get("source_hashes", {})}
        groups[g] = rescore(full)
    return {"command": slim.get("command", ""), "groups": groups}


def write_report(results: dict, out: pathlib.Path) -> None:
    (out / "report.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    lines = ["# Mutation report", "", f"`{results['command']}`", "",
             "| group | module | mutants | killed | equivalent | device only | survived | score |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g, r in results["groups"].items():
        for mod, c in r["modules"].items():
            lines.append(f"| {g} | {mod} | {c['mutants']} | {c['killed']} | {c['equivalent']} | "
                         f"{c.get('device_only', 0)} | {c['survived']} | "
                         f"{100 * c['score']:.1f} % |")
    lines.append("")
    for g, r in results["groups"].items():
        for mod, surv in r["survivors"].items():
            lines += [f"## Survivors in {mod} ({g})", ""]
            for s in surv:
                lines += [f"### {s['name']} ({s['status']})", "", "```diff", s["diff"].strip(), "```", ""]
    (out / "report.md").write_text("\n".join(lines))


def print_scores(r: dict) -> None:
    for mod, c in r["modules"].items():
        print(f"[mutation] {mod}: {c['killed']}/{c['mutants'] - c['equivalent'] - c.get('device_only', 0)} killed "
              f"({100 * c['score']:.1f} %), {c['equivalent']} equivalent, {c.get('device_only', 0)} device only, "
              f"{c['survived']} survived [{r['seconds']:.0f} s]", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--group", action="append", choices=sorted(GROUPS),
                    help="a group to run (repeatable; default: all)")
    ap.add_argument("--out", default="runs/mutation")
    ap.add_argument("--children", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--collect-only", action="store_true",
                    help="score the mutmut runs already in OUT/work (an interrupted run's checked mutants)")
    ap.add_argument("--recheck", action="store_true",
                    help="test again only the survivors and unchecked mutants of each group's last run in OUT, "
                         "keeping its kills (all mutants of a file changed since): for after adding tests")
    ap.add_argument("--survivors-only", action="store_true",
                    help="with --recheck: leave the unchecked mutants unchecked (a quick look at the survivors)")
    ap.add_argument("--rescore", action="store_true",
                    help="score OUT/report.json again against benchmarks/mutation_equivalent.toml, running nothing")
    ap.add_argument("--start-from", default=None,
                    help="begin from a kept json (e.g. benchmarks/results/mutation.json) instead of OUT/report.json")
    ap.add_argument("--save", default=None, help="also write the report's json here (e.g. benchmarks/results/mutation.json)")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python -m benchmarks.mutation " + " ".join(argv if argv is not None else sys.argv[1:]),
               "groups": {}}
    previous = out / "report.json"
    if args.start_from:  # a kept json carries every status: a fresh machine goes on from it
        results["groups"] = unslim_report(json.loads(pathlib.Path(args.start_from).read_text()))["groups"]
    elif previous.is_file():  # groups run earlier keep their results: run one group at a time if you like
        results["groups"] = json.loads(previous.read_text()).get("groups", {})
    if args.rescore:
        if not results["groups"]:
            raise FileNotFoundError(f"--rescore: {previous} holds no results; run some groups first.")
        results["groups"] = {g: rescore(r) for g, r in results["groups"].items()}
        for r in results["groups"].values():
            print_scores(r)
        write_report(results, out)
        args.group = []
    for name in args.group if args.group is not None else list(GROUPS):
        print(f"[mutation] {name}: running mutmut ...", flush=True)
        prev = results["groups"].get(name) if args.recheck else None
        if args.recheck and prev is None:
            raise ValueError(f"--recheck: {out} has no earlier result of group {name!r}; run it first.")
        r = run_group(name, GROUPS[name], out, args.children, args.collect_only, prev, args.survivors_only)
        results["groups"][name] = r
        print_scores(r)
        write_report(results, out)
    if args.save:
        save_kept(pathlib.Path(args.save), slim_report(results))
    print(f"[mutation] report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
