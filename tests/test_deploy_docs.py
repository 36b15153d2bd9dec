"""The deployment files of docs/deploy/ (docs/deploy.md): each parses (YAML, POSIX shell,
systemd units through `systemd-analyze verify` where installed, the Dockerfile's
instructions), what they refer to exists, and every chromasnap command they (and
deploy.md's shell blocks) run exists in the CLI with the options given (`--help` run on
each). No container runtime or Kubernetes cluster is needed or used."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from chromasnap.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}

# `chromasnap` as a command word (also /opt/chroma/bin/chromasnap), not chromasnap-sidecar,
# chromasnap.prom or chromasnap:local; the command ends at a shell separator or quote
COMMAND = re.compile(r"(?:^|(?<=[\s;&|(/\"']))chromasnap((?:[ \t]+[^\s;&|()\"'`]+)*)")


def shell_commands(text: str) -> list[list[str]]:
    """The argument lists of the chromasnap commands in a piece of shell."""
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    lines = [re.sub(r"(^|\s)#.*", "", ln) for ln in text.splitlines()]  # comments
    out = []
    for ln in lines:
        for m in COMMAND.finditer(ln):
            args = m.group(1).split()
            while args[:1] == ["chromasnap"]:  # `docker compose exec chromasnap chromasnap list`
                args.pop(0)
            if args:  # a bare word (`journalctl -g chromasnap`) runs nothing
                out.append(args)
    return out


def yaml_commands(doc: Any, chromasnap_image: bool = False) -> Iterator[str | list[str]]:
    """Shell text, or argv lists, of every command a compose or Kubernetes document runs.
    A compose service on the chromasnap image with no entrypoint runs `chromasnap ARGS`."""
    if isinstance(doc, dict):
        image = str(doc.get("image", ""))
        on_chromasnap = image.startswith("chromasnap") and "entrypoint" not in doc
        for key, value in doc.items():
            if key in ("command", "args", "entrypoint", "test"):
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    argv = [str(v) for v in value]
                    if argv[:1] == ["CMD-SHELL"] or argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
                        yield argv[-1]
                    elif argv[:1] == ["CMD"]:
                        yield argv[1:]
                    elif key == "command" and on_chromasnap and argv[:1] != ["chromasnap"]:
                        yield ["chromasnap", *argv]
                    else:
                        yield argv
            else:
                yield from yaml_commands(value, chromasnap_image or on_chromasnap)
    elif isinstance(doc, list):
        for item in doc:
            yield from yaml_commands(item, chromasnap_image)


def commands_of(found: Iterator[str | list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for item in found:
        if isinstance(item, str):
            out += shell_commands(item)
        elif item and Path(item[0]).name == "chromasnap":
            out.append(item[1:])
    return out


def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit's sections and their settings, every line accounted for."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            current = sections.setdefault(m.group(1), [])
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep and re.fullmatch(r"[A-Za-z]+", key), f"{path.name}:{n}: {line}"
        current.append((key, value))
    return sections


def all_commands() -> dict[str, list[list[str]]]:
    """Per file: the chromasnap commands it runs."""
    found: dict[str, list[list[str]]] = {}
    for path in sorted(DEPLOY.iterdir()):
        if path.suffix in (".yml", ".yaml"):
            found[path.name] = commands_of(
                c for doc in yaml.safe_load_all(path.read_text()) for c in yaml_commands(doc)
            )
        elif path.suffix == ".sh":
            text = path.read_text()
            found[path.name] = shell_commands(text)
            # the sidecar's `prune $rules`: its default rules, and those the compose file sets
            found[path.name] += [["prune", *m.split()] for m in re.findall(r"PRUNE_RULES:-([^}]*)", text)]
            compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
            for svc in compose["services"].values():
                if "PRUNE_RULES" in svc.get("environment", {}):
                    found[path.name].append(["prune", *svc["environment"]["PRUNE_RULES"].split()])
        elif path.suffix in (".service", ".timer"):
            settings = itertools.chain.from_iterable(unit_sections(path).values())
            execs = [v for k, v in settings if k.startswith("Exec")]
            found[path.name] = [c for v in execs for c in shell_commands(v.lstrip("-@+!:"))]
        elif path.name == "Dockerfile":
            text = path.read_text()
            found[path.name] = shell_commands(text) + ([["--help"]] if 'CMD ["--help"]' in text else [])
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    found["deploy.md"] = [c for b in blocks for c in shell_commands(b)]
    return found


def test_every_chromasnap_command_they_run_exists_with_its_options() -> None:
    found = all_commands()
    ran = {(name, args[0] if args else "") for name, cmds in found.items() for args in cmds}
    for name, sub in [
        ("docker-compose.yml", "recover"),
        ("docker-compose.yml", "health"),
        ("chromasnap-sidecar.sh", "snapshot"),
        ("chromasnap-sidecar.sh", "prune"),
        ("chromasnap-sidecar.sh", "stats"),
        ("kubernetes.yaml", "recover"),
        ("kubernetes.yaml", "snapshot"),
        ("kubernetes.yaml", "prune"),
        ("chroma.service", "recover"),
        ("chromasnap-snapshot.service", "snapshot"),
        ("Dockerfile", "health"),
    ]:
        assert (name, sub) in ran, f"{name} should run chromasnap {sub} (found {sorted(ran)})"

    root = typer.main.get_command(app)
    helped: set[tuple[str, ...]] = set()
    for name, cmds in found.items():
        for args in cmds:
            cmd: Any = root
            path: list[str] = []
            rest = list(args)
            while rest and not rest[0].startswith("-") and hasattr(cmd, "commands"):
                word = rest.pop(0)
                assert word in cmd.commands, f"{name}: `chromasnap {' '.join(args)}`: no command {word!r}"
                cmd, path = cmd.commands[word], [*path, word]
            options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            for token in rest:
                if token.startswith("-") and not token.lstrip("-").isdigit():
                    opt = token.split("=", 1)[0]
                    assert opt in options, f"{name}: `chromasnap {' '.join(args)}`: no option {opt}"
            helped.add(tuple(path))
    for path in sorted(helped):
        r = subprocess.run(
            [sys.executable, "-m", "chromasnap.cli", *path, "--help"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0 and "Usage" in r.stdout, (path, r.stderr)
    assert {("recover",), ("snapshot",), ("prune",), ("verify",), ("stats",), ("health",)} <= helped


def test_compose_and_kubernetes_files_parse_and_refer_to_what_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services, volumes = compose["services"], set(compose["volumes"])
    assert {"recover", "chroma", "chromasnap"} <= set(services)
    assert services["chroma"]["depends_on"]["recover"]["condition"] == "service_completed_successfully"
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for mount in svc.get("volumes", []):
            assert mount.split(":")[0] in volumes, (name, mount)
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT and (context / build["dockerfile"]).is_file()

    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "CronJob", "PersistentVolumeClaim"} <= set(kinds)
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    cron_pod = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][:2] == ["chromasnap", "recover"]
    for spec in (pod, cron_pod):
        vols = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        assert set(vols.values()) <= claims
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(vols)
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"] == labels


def test_shell_and_dockerfile_syntax() -> None:
    scripts = [p.read_text() for p in DEPLOY.glob("*.sh")]
    for path in DEPLOY.glob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            scripts += [c for c in yaml_commands(doc) if isinstance(c, str)]
    assert len(scripts) >= 3
    for script in scripts:
        r = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, check=False)
        assert r.returncode == 0, (script, r.stderr)
    assert all(os.access(p, os.X_OK) for p in DEPLOY.glob("*.sh"))

    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    words = [ln.split()[0] for ln in lines]
    assert words[0] == "FROM"
    known = {
        "FROM",
        "ARG",
        "ENV",
        "RUN",
        "COPY",
        "WORKDIR",
        "USER",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
        "LABEL",
    }
    assert set(words) <= known, set(words) - known
    for ln in lines:
        if ln.startswith("COPY "):
            src = ln.split()[1]
            assert (ROOT / src).exists(), ln  # the build context is the repository root


def test_systemd_units() -> None:
    units = sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")])
    assert {p.name for p in units} == {
        "chroma.service",
        "chromasnap-snapshot.service",
        "chromasnap-snapshot.timer",
    }
    for path in units:
        sections = unit_sections(path)
        assert set(sections) <= {"Unit", "Service", "Timer", "Install"}
        keys = {k for k, _ in itertools.chain.from_iterable(sections.values())}
        assert ("ExecStart" in keys) if path.suffix == ".service" else ("OnCalendar" in keys)
    pre = dict(unit_sections(DEPLOY / "chroma.service")["Service"])["ExecStartPre"]
    assert pre.split()[:2] == ["/opt/chroma/bin/chromasnap", "recover"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` with the units' /opt/chroma/bin programs replaced by stubs
    (it checks that each command is executable)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("chroma", "chromasnap"):
        (stubs / name).write_text("#!/bin/sh\n")
        (stubs / name).chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for path in [*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")]:
        (units / path.name).write_text(path.read_text().replace("/opt/chroma/bin/", f"{stubs}/"))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr
