"""The mutation report's bookkeeping (benchmarks/mutation.py): module names, the device-only rule,
equivalent mutants that must still match their diff, the per-module score, the skipped lines."""

import re

import pytest

from benchmarks import mutation as M

DIFF = """--- samplers/completion.py
+++ samplers/completion.py
@@ -1,3 +1,3 @@
-    rows = torch.arange(N, device=x.device) if rows is None else rows
+    rows = torch.arange(N, ) if rows is None else rows
"""


def test_module_of_a_mutant_name():
    assert M.module_of("flowalign.trainer.xǁTrainerǁresume__mutmut_3") == "flowalign/trainer.py"
    assert M.module_of("samplers.tree.x_tree_rollout__mutmut_12") == "samplers/tree.py"
    # a package's own functions live in its __init__.py
    assert M.module_of("flowalign.algorithms.x_build_algorithm__mutmut_6") == "flowalign/algorithms/__init__.py"


def test_device_only_mutants_are_recognised_and_nothing_else():
    assert M.device_only(DIFF)
    assert M.device_only(DIFF.replace("torch.arange(N, )", "torch.arange(N, device=None)"))
    assert not M.device_only(DIFF.replace("torch.arange(N, )", "torch.arange(N + 1, )"))
    assert not M.device_only(DIFF.replace("torch.arange(N, )", "torch.arange(N, device=x.device) if False"))
    # device=None between other arguments
    mid = ("-    return torch.randn(shape, generator=generator, device=device, dtype=dtype)\n"
           "+    return torch.randn(shape, generator=generator, device=None, dtype=dtype)\n")
    assert M.device_only(mid) and not M.device_only(mid.replace("None, dtype=dtype", "None, dtype=None"))
    # the positional forms
    to = "-    x = t.latents[parents.to(dev)]\n+    x = t.latents[parents.to(None)]\n"
    assert M.device_only(to) and M.device_only(to.replace("(dev)", "(x.device)"))
    assert not M.device_only(to.replace("(dev)", "(torch.float32)"))  # a dtype is not a device
    assert not M.device_only(to.replace("[parents.to(None)]", "[parents.to(None) + 1]"))
    assert M.device_only("-    dev = t.latents.device\n+    dev = None\n")
    assert not M.device_only("-    dev = t.latents.device\n+    dev = 0\n")
    assert not M.device_only("-    n = t.latents.shape\n+    n = None\n")


def test_score_counts_equivalents_only_while_their_line_matches(tmp_path):
    statuses = {"samplers.a.x_f__mutmut_1": "killed", "samplers.a.x_f__mutmut_2": "survived",
                "samplers.a.x_f__mutmut_3": "no tests", "samplers.a.x_f__mutmut_4": "timeout",
                "samplers.a.x_f__mutmut_5": "survived"}
    diffs = {"samplers.a.x_f__mutmut_2": "-    y = x * 1\n+    y = x * 2\n",
             "samplers.a.x_f__mutmut_3": "-    z = 0\n+    z = 1\n", "samplers.a.x_f__mutmut_5": DIFF}
    eq_file = tmp_path / "eq.toml"
    eq_file.write_text('[[mutant]]\nname = "samplers.a.x_f__mutmut_2"\nline = "y = x * 2"\nwhy = "x is 0 there"\n')
    eq = M.load_equivalent(eq_file)
    out = M.score(statuses, diffs, eq)
    assert out["modules"]["samplers/a.py"] == {"mutants": 5, "killed": 2, "equivalent": 1, "device_only": 1,
                                                "survived": 1, "score": round(2 / 3, 4)}
    assert [s["name"] for s in out["survivors"]["samplers/a.py"]] == ["samplers.a.x_f__mutmut_3"]
    # the code moved: the listed line is no longer the mutant's diff, so it is a survivor again
    diffs["samplers.a.x_f__mutmut_2"] = "-    y = x * 1\n+    y = x * 3\n"
    assert M.score(statuses, diffs, eq)["modules"]["samplers/a.py"]["survived"] == 2


def test_an_equivalent_entry_without_its_reason_is_refused(tmp_path):
    f = tmp_path / "eq.toml"
    f.write_text('[[mutant]]\nname = "samplers.a.x_f__mutmut_2"\nline = "y = x * 2"\n')
    with pytest.raises(ValueError, match="why"):
        M.load_equivalent(f)


def test_the_shipped_equivalent_list_reads_and_names_known_groups():
    eq = M.load_equivalent()
    for name, entry in eq.items():
        assert entry["why"].strip() and "__mutmut_" in name
        assert any(M.module_of(name) == f or re.fullmatch(f.replace("*", ".*"), M.module_of(name))
                   for g in M.GROUPS.values() for f in g.files), name


@pytest.mark.parametrize("line, skipped", [
    ('        raise ValueError(f"bad {x}")', True),
    ('                         "(calibrate with the same sampler.num_steps).")', True),
    ('    self.acc.print(f"resumed from {path}")', True),
    ('    x = "linear"', False),
    ('    "a": "b",', False),
    ('    return mu / (mu + (1 / sigmas - 1))', False),
])
def test_message_lines_are_not_mutated_and_code_lines_are(line, skipped):
    assert any(re.search(p, line) for p in M.SKIP_PATTERNS) == skipped


def test_every_group_names_existing_files_and_tests():
    root = M.ROOT
    for name, g in M.GROUPS.items():
        for f in g.files:
            assert list(root.glob(f)), (name, f)
        for t in g.tests + g.spawn_tests:
            if t.startswith("tests/"):
                path, _, test = t.partition("::")
                assert (root / path).exists(), (name, t)
                assert not test or f"def {test}(" in (root / path).read_text(), (name, t)
        assert bool(g.spawn_tests) == bool(g.spawn_functions), name


def test_spawn_tests_see_the_mutant_in_their_child_processes(tmp_path):
    """A test that reaches the code in a child process kills a mutant there: the child inherits
    MUTANT_UNDER_TEST. Only the mutants the tests fail for count as killed, and tests that fail with
    no mutant active are refused (every mutant would look killed)."""

    (tmp_path / "mutants").mkdir()
    (tmp_path / "mutants" / "test_spawned.py").write_text(
        "import subprocess, sys\n"
        "def test_child():\n"
        "    seen = subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"MUTANT_UNDER_TEST\"])'],\n"
        "                          capture_output=True, text=True).stdout.strip()\n"
        "    assert seen != 'm.x_f__mutmut_2'\n")
    group = M.Group(files=(), tests=(), spawn_tests=("test_spawned.py",), spawn_functions=("m.x_f*",))
    names = ["m.x_f__mutmut_1", "m.x_f__mutmut_2", "m.x_f__mutmut_3"]
    env = {k: v for k, v in M.os.environ.items() if k != "PYTEST_ADDOPTS"}
    assert M.spawn_check(tmp_path, group, names, env) == ["m.x_f__mutmut_2"]
    (tmp_path / "mutants" / "test_spawned.py").write_text("def test_child():\n    assert False\n")
    with pytest.raises(RuntimeError, match="fail with no mutant active"):
        M.spawn_check(tmp_path, group, names, env)


def test_recheck_refuses_results_of_other_sources(tmp_path):
    """Mutants are numbered in source order: earlier kills apply only to unchanged files."""
    group = M.GROUPS["losses_advantages"]
    assert M.source_hashes(group) == M.source_hashes(group)
    assert set(M.source_hashes(group)) == {"flowalign/losses.py", "flowalign/advantages.py"}
    with pytest.raises(ValueError, match="every source of group"):
        M.run_group("losses_advantages", group, tmp_path, 1, previous={"source_hashes": {}, "statuses": {}})


def test_rescore_applies_a_newly_listed_equivalent_and_the_saved_report_is_slim(tmp_path):
    """--rescore scores stored statuses and diffs again; the kept json names survivors and counts the
    unchecked mutants, without every status or diff."""
    statuses = {"samplers.a.x_f__mutmut_1": "killed", "samplers.a.x_f__mutmut_2": "survived",
                "samplers.a.x_f__mutmut_3": "not checked"}
    diffs = {"samplers.a.x_f__mutmut_2": "-    y = x * 1\n+    y = x * 2\n"}
    result = {**M.score({k: v for k, v in statuses.items() if v != "not checked"}, diffs, {}),
              "statuses": statuses, "diffs": diffs, "seconds": 3.0}
    assert result["modules"]["samplers/a.py"]["score"] == 0.5
    eq_file = tmp_path / "eq.toml"
    eq_file.write_text('[[mutant]]\nname = "samplers.a.x_f__mutmut_2"\nline = "y = x * 2"\nwhy = "x is 0 there"\n')
    again = M.rescore(result, M.load_equivalent(eq_file))
    assert again["modules"]["samplers/a.py"] == {"mutants": 2, "killed": 1, "equivalent": 1, "device_only": 0,
                                                 "survived": 0, "score": 1.0}
    assert again["statuses"] == statuses and again["diffs"] == diffs
    slim = M.slim_report({"command": "c", "groups": {"g": result}})
    assert slim == {"command": "c", "groups": {"g": {
        "modules": result["modules"], "seconds": 3.0, "unchecked": 1,
        "survivors": {"samplers/a.py": ["samplers.a.x_f__mutmut_2"]},
        "statuses": {"samplers.a.x_f": {"killed": [1], "not checked": [3], "survived": [2]}},
        "diffs": diffs, "source_hashes": {}}}}


def test_a_kept_report_packs_every_status_and_a_fresh_machine_goes_on_from_it(tmp_path):
    """The kept json is small (mutant numbers per function) yet complete: --start-from reads it back
    as the same statuses, diffs and scores, so --rescore (and --recheck) need no earlier OUT folder."""
    import json

    statuses = {"flowalign.losses.x_f__mutmut_1": "killed", "flowalign.losses.x_f__mutmut_12": "survived",
                "flowalign.losses.x_f__mutmut_2": "not checked", "flowalign.losses.xǁCǁg__mutmut_7": "timeout"}
    assert M.unpack_statuses(M.pack_statuses(statuses)) == statuses
    assert M.pack_statuses(statuses)["flowalign.losses.x_f"] == {"killed": [1], "not checked": [2], "survived": [12]}
    diffs = {"flowalign.losses.x_f__mutmut_12": "-    y = x * 1\n+    y = x * 2\n"}
    result = {**M.score({k: v for k, v in statuses.items() if v != "not checked"}, diffs, {}),
              "statuses": statuses, "diffs": diffs, "seconds": 2.0, "source_hashes": {"flowalign/losses.py": "ab"}}
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps(M.slim_report({"command": "c", "groups": {"losses_advantages": result}})))
    back = M.unslim_report(json.loads(kept.read_text()))["groups"]["losses_advantages"]
    assert back["statuses"] == statuses and back["diffs"] == diffs and back["modules"] == result["modules"]
    assert back["source_hashes"] == {"flowalign/losses.py": "ab"}
    M.main(["--rescore", "--out", str(tmp_path / "fresh"), "--start-from", str(kept)])
    assert "flowalign.losses.x_f__mutmut_12" in (tmp_path / "fresh" / "report.md").read_text()
    old = {"command": "old run", "groups": {"g": {"modules": {"x.py": {}}, "seconds": 1.0, "unchecked": 0,
                                                  "survivors": {}}}}
    assert M.unslim_report(old)["groups"] == {}  # scores without statuses: nothing to go on from
    # saving a report of some groups keeps the other groups' entries, with the command that made them
    (tmp_path / "both.json").write_text(json.dumps(old))
    M.save_kept(tmp_path / "both.json", M.slim_report({"command": "c", "groups": {"losses_advantages": result}}))
    both = json.loads((tmp_path / "both.json").read_text())
    assert set(both["groups"]) == {"g", "losses_advantages"} and both["groups"]["g"]["command"] == "old run"
    assert both["groups"]["losses_advantages"]["statuses"] and both["command"] == "c"


def test_rescore_command_rewrites_the_report_without_running_mutmut(tmp_path):
    import json

    statuses = {"flowalign.losses.x_f__mutmut_1": "killed", "flowalign.losses.x_f__mutmut_2": "survived"}
    diffs = {"flowalign.losses.x_f__mutmut_2": "-    y = x * 1\n+    y = x * 2\n"}
    stale = {"modules": {}, "survivors": {}, "statuses": statuses, "diffs": diffs, "seconds": 1.0}
    (tmp_path / "report.json").write_text(json.dumps({"command": "x", "groups": {"losses_advantages": stale}}))
    M.main(["--rescore", "--out", str(tmp_path), "--save", str(tmp_path / "slim.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["groups"]["losses_advantages"]["modules"]["flowalign/losses.py"]["survived"] == 1
    assert "flowalign.losses.x_f__mutmut_2" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "slim.json").read_text())["groups"]["losses_advantages"]["unchecked"] == 0
    with pytest.raises(FileNotFoundError, match="holds no results"):
        M.main(["--rescore", "--out", str(tmp_path / "empty")])


def test_mutmut_section_is_valid_toml_and_copies_the_data_tests_read():
    """mutmut runs the tests inside mutants/; the shipped configs must be there too, or a test
    that loads every configs/*.yaml finds none (it would pass, and kill no mutant)."""
    section = M.mutmut_section(M.GROUPS["algorithms"])
    cfg = M.tomllib.loads(section)["tool"]["mutmut"]
    assert cfg["only_mutate"] == ["flowalign/algorithms/*.py"] and cfg["source_paths"] == ["flowalign"]
    assert "configs" in cfg["also_copy"] and all((M.ROOT / p).is_dir() for p in cfg["also_copy"])
    assert cfg["pytest_add_cli_args_test_selection"] == list(M.GROUPS["algorithms"].tests)


def test_recheck_keeps_reviewed_survivors_without_running_them(tmp_path, monkeypatch):
    """A --recheck runs again only what new tests could kill: a device-only or listed-equivalent
    survivor keeps its status and diff (and its place in the score); the rest are rechecked."""
    group = M.GROUPS["losses_advantages"]
    dev = "-    y = torch.zeros(3, device=x.device)\n+    y = torch.zeros(3, )\n"
    eq_diff = "-    a = b * 2\n+    a = b * 2.0\n"
    plain = "-    a = b + 1\n+    a = b - 1\n"
    names = [f"flowalign.losses.x_f__mutmut_{i}" for i in range(1, 6)]
    previous = {"source_hashes": M.source_hashes(group), "seconds": 5.0,
                "statuses": dict(zip(names, ["killed", "survived", "survived", "survived", "not checked"])),
                "diffs": {names[1]: dev, names[2]: eq_diff, names[3]: plain}}
    eq = {names[2]: {"name": names[2], "line": "a = b * 2.0", "why": "an int times 2 equals it times 2.0"}}
    # what mutmut left after rechecking: the plain survivor and the unchecked one were killed (its
    # statuses are read from the work folder; mutmut itself is not needed, nor installed by make test)
    (tmp_path / "work" / "losses_advantages" / "mutants").mkdir(parents=True)
    asked = []

    def statuses(work, patterns):
        asked.extend(patterns)
        return {names[3]: "killed", names[4]: "killed"}

    monkeypatch.setattr(M, "read_statuses", statuses)
    monkeypatch.setattr(M, "load_equivalent", lambda path=M.EQUIVALENT: eq)
    r = M.run_group("losses_advantages", group, tmp_path, 1, collect_only=True, previous=previous)
    assert sorted(asked) == [names[3], names[4]]  # the reviewed survivors are not looked up again
    assert r["statuses"] == dict(zip(names, ["killed", "survived", "survived", "killed", "killed"]))
    assert r["diffs"] == {names[1]: dev, names[2]: eq_diff}
    assert r["modules"]["flowalign/losses.py"] == {"mutants": 5, "killed": 3, "equivalent": 1, "device_only": 1,
                                                  "survived": 0, "score": 1.0}
    assert M.reviewed(plain, eq.get(names[3])) is None and M.reviewed(eq_diff, eq[names[2]]) == "equivalent"
    # an interrupted recheck that never reached the survivor: it stays a survivor (and scored), the
    # unchecked one stays unchecked
    monkeypatch.setattr(M, "read_statuses", lambda work, patterns: {names[3]: "not checked", names[4]: "not checked"})
    monkeypatch.setattr(M.subprocess, "run", lambda *a, **k: M.subprocess.CompletedProcess(a, 0, stdout=plain))
    r = M.run_group("losses_advantages", group, tmp_path, 1, collect_only=True, previous=previous)
    assert r["statuses"] == dict(zip(names, ["killed", "survived", "survived", "survived", "not checked"]))
    assert r["modules"]["flowalign/losses.py"]["survived"] == 1 and r["diffs"][names[3]] == plain


def test_parallel_children_share_the_cores_as_torch_threads(monkeypatch):
    monkeypatch.setattr(M.os, "cpu_count", lambda: 8)
    assert M.child_env(2)["OMP_NUM_THREADS"] == "4" and M.child_env(2)["MKL_NUM_THREADS"] == "4"
    assert M.child_env(1)["OMP_NUM_THREADS"] == "8"
    assert M.child_env(16)["OMP_NUM_THREADS"] == "1"  # never zero threads
    monkeypatch.setattr(M.os, "cpu_count", lambda: None)
    assert M.child_env(2)["OMP_NUM_THREADS"] == "1"


def test_the_report_keeps_the_hashes_of_the_sources_as_mutated(tmp_path, monkeypatch):
    """A file edited while mutmut runs must count as changed at the next --recheck: the report records
    the hashes taken when the run began, not when it ended."""
    group = M.GROUPS["losses_advantages"]
    source = {"flowalign/losses.py": "as-mutated"}
    monkeypatch.setattr(M, "source_hashes", lambda g: dict(source))
    (tmp_path / "work" / "losses_advantages" / "mutants").mkdir(parents=True)

    def statuses(work, patterns):  # read after mutmut's run, by which time the file was edited
        source["flowalign/losses.py"] = "edited-during-the-run"
        return {"flowalign.losses.x_f__mutmut_1": "killed"}

    monkeypatch.setattr(M, "read_statuses", statuses)
    r = M.run_group("losses_advantages", group, tmp_path, 1, collect_only=True)
    assert r["source_hashes"] == {"flowalign/losses.py": "as-mutated"}
