"""A non-editable install finds every search space, ships the starter knowledge base and runs a search; importing
autokd leaves the process environment alone."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_built_wheel_ships_and_finds_every_search_space_and_the_starter_kb(tmp_path):
    source = tmp_path / "src"  # build from a copy: nothing is written into the working tree
    shutil.copytree(ROOT / "autokd", source / "autokd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("autokd-*.whl")
    shipped = sorted(Path(n).stem for n in zipfile.ZipFile(wheel).namelist() if n.startswith("autokd/search_spaces/"))
    expected = sorted(p.stem for p in (ROOT / "autokd" / "search_spaces").glob("*.yaml"))
    assert shipped == expected and len(expected) >= 4
    starter = zipfile.ZipFile(wheel).read("autokd/recipes/data/starter_kb.csv")
    assert starter == (ROOT / "autokd" / "recipes" / "data" / "starter_kb.csv").read_bytes()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import autokd.spaces as s; "
            "print(s.__file__); print(','.join(s.available_spaces())); "
            "print(' '.join(str(s.load_space(n, 32).smallest()) for n in ['cifar_resnet'])); "
            "from autokd.recipes.kb import read_kbs; t, src = read_kbs(sys.argv[2]); print(src[0], len(t))")
    out = subprocess.run([sys.executable, "-c", code, str(site), str(tmp_path / "no_user_kb.csv")], cwd=tmp_path,
                         check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(site))  # the installed copy, not the working tree
    assert out[1].split(",") == expected
    assert out[2].startswith("cifar_resnet(")
    kb_file, kb_rows = out[3].split()  # the installed starter KB answers with no KB of the user's own
    assert kb_file.startswith(str(site)) and int(kb_rows) >= 400
    # the installed copy runs a (short) demo search from a folder that is not the repository
    demo = ("import sys; sys.path.insert(0, sys.argv[1]); import autokd; from autokd.cli import main; "
            "print(autokd.__file__); sys.exit(main(['search', '--teacher', 'resnet20_cifar', '--space', "
            "'cifar_resnet', '--budget', '25M', '--trials', '4', '--population', '4', '--tournament', '2', "
            "'--out', 'demo', '--quiet']))")
    run = subprocess.run([sys.executable, "-c", demo, str(site)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(site)) and (tmp_path / "demo" / "leaderboard.csv").is_file()


def test_importing_autokd_leaves_the_environment_alone():
    code = ("import os, torch, timm, fvcore.nn, optuna, huggingface_hub.constants as c; "  # they may set their own
            "before = dict(os.environ); "
            "import autokd.cli, autokd.pipeline, autokd.search, autokd.teachers; "
            "from autokd.teachers import resolve_teacher; "
            "t = resolve_teacher('resnet20_cifar', 10); "
            "print(dict(os.environ) == before, 'HF_HUB_OFFLINE' in os.environ, c.HF_HUB_OFFLINE)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_teachers_resolve_offline_and_restore_the_flag(monkeypatch):
    import huggingface_hub.constants as constants

    from autokd import teachers

    seen = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real = teachers._resolve_teacher
    monkeypatch.setattr(teachers, "_resolve_teacher", lambda *a: seen.append(
        (__import__("os").environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE)) or real(*a))
    teachers.resolve_teacher("resnet20_cifar", 10)
    assert seen == [("1", True)]  # offline while the teacher is built, nothing downloads
    assert "HF_HUB_OFFLINE" not in __import__("os").environ and constants.HF_HUB_OFFLINE is False
