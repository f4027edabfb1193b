#!/usr/bin/env python3
"""Generated-client check: builds a Python client from an OpenAPI document with
openapi-python-client (offline: the document is read from disk) and drives a running
cloudletd with it.

    python3 tests/openapi/client_check.py docs/openapi.json URL TOKEN [--expect-base NAME]

URL and TOKEN default to $CLOUDLET_URL and $CLOUDLET_TOKEN. Checks, each through the
generated code (operations are found by method and path, not by operationId):

  (a) GET /api/v1/bases with the token answers 200 and parses into a list;
  (b) GET /api/v1/bases/no-such-base answers 404 and the generated error model (the one
      with an `error` field, whatever its name) gives error.code == "not-found";
  (c) GET /api/v1/bases without a token answers 401 with error.code == "unauthorized".
      When the document declares no 401 answer for the operation, the generated client
      cannot parse it: the body is read with the generated error model instead and a
      NOTE is printed (with --strict that is a failure; the same holds for (b)).

--expect-base NAME also checks that base NAME is listed and that GET /api/v1/bases/NAME
parses into the same generated model as the list's items.

Exit status: 0 all checks passed, 1 a check failed, 2 bad usage, 3 the generator or its
dependencies are missing (run scripts/setup-host.sh as root).

The tools are looked up in this interpreter first, then in the venv that
scripts/setup-host.sh creates ($CLOUDLET_CI_VENV, default /opt/cloudlet-ci-venv): when
they are only there, this script re-runs itself with that venv's python.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

VENV = Path(os.environ.get("CLOUDLET_CI_VENV", "/opt/cloudlet-ci-venv"))
REEXEC_MARK = "CLOUDLET_CLIENT_CHECK_REEXEC"
PACKAGE = "cloudlet_generated_client"
MISSING_TOOLS = 3


class CheckFailed(Exception):
    """One of the checks did not hold."""


def fail(msg: str, code: int = 1) -> NoReturn:
    print(f"client_check: FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def ensure_tools() -> None:
    """Makes sure openapi-python-client and the generated code's dependencies import,
    re-running this script in the CI venv when only that has them."""
    missing = []
    for module in ("openapi_python_client", "httpx", "attrs"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not missing:
        return
    venv_python = VENV / "bin" / "python3"
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if venv_python.exists() and not in_venv and not os.environ.get(REEXEC_MARK):
        env = dict(os.environ, **{REEXEC_MARK: "1"})
        os.execve(str(venv_python), [str(venv_python), *sys.argv], env)
    fail(
        f"missing Python modules {', '.join(missing)} (interpreter {sys.executable}, "
        f"venv {VENV} {'present' if venv_python.exists() else 'absent'}): "
        "run scripts/setup-host.sh as root to install openapi-python-client",
        MISSING_TOOLS,
    )


def generate(spec: Path, out_root: Path, fail_on_warning: bool) -> Path:
    """Generates the client package under `out_root`; its directory."""
    config = out_root / "generator-config.json"
    # No post hooks: the default ones run `ruff` from PATH, which is not needed to import
    # the code and may not be on PATH outside the venv.
    config.write_text(json.dumps({"post_hooks": [], "package_name_override": PACKAGE}))
    package_dir = out_root / PACKAGE
    cmd = [
        sys.executable,
        "-m",
        "openapi_python_client",
        "generate",
        "--path",
        str(spec),
        "--config",
        str(config),
        "--meta",
        "none",
        "--output-path",
        str(package_dir),
    ]
    if fail_on_warning:
        cmd.append("--fail-on-warning")
    # --path: the generator reads the document from disk and needs no network.
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or not (package_dir / "__init__.py").exists():
        fail(f"openapi-python-client failed (exit {proc.returncode}) on {spec}:\n{output}")
    if "Warning" in output or "WARNING" in output:
        print(
            f"client_check: generator warnings (what they name is not in the generated client):"
            f"\n{output}\n",
            flush=True,
        )
    else:
        print("client_check: client generated without warnings", flush=True)
    return package_dir


_TEMPLATE = re.compile(r"\{[^}]*\}")


def _normalize(path: str) -> str:
    return _TEMPLATE.sub("{}", path)


def find_operation(package: str, package_dir: Path, method: str, path: str) -> ModuleType:
    """The generated endpoint module for `method path`, found by the method and URL in its
    `_get_kwargs` (so renamed operationIds or tags do not matter)."""
    want = (method.lower(), _normalize(path))
    found = []
    for source in sorted((package_dir / "api").glob("*/*.py")):
        if source.name == "__init__.py":
            continue
        text = source.read_text()
        m = re.search(r'"method":\s*"(\w+)"', text)
        u = re.search(r'"url":\s*f?"([^"]+)"', text)
        if m and u and (m.group(1).lower(), _normalize(u.group(1))) == want:
            found.append(source)
    if not found:
        raise CheckFailed(
            f"the generated client has no operation for {method.upper()} {path} "
            "(not in the document, or the generator skipped it: see its warnings above)"
        )
    if len(found) > 1:
        raise CheckFailed(
            f"several generated operations for {method.upper()} {path}: "
            + ", ".join(str(f.relative_to(package_dir)) for f in found)
        )
    rel = found[0].relative_to(package_dir).with_suffix("")
    return importlib.import_module(".".join([package, *rel.parts]))


def is_model(value: Any) -> bool:
    """Whether `value` is an instance of a generated model (they are attrs classes)."""
    import attrs

    return attrs.has(type(value))


def error_models(package: str) -> list[type]:
    """The generated models with an `error` field (the error body), whatever their names."""
    import attrs

    models = importlib.import_module(f"{package}.models")
    found = []
    for name in getattr(models, "__all__", dir(models)):
        cls = getattr(models, name, None)
        if isinstance(cls, type) and attrs.has(cls):
            if "error" in {f.name for f in attrs.fields(cls)}:
                found.append(cls)
    # Prefer models named like an error body over others that merely carry an error.
    return sorted(found, key=lambda cls: "error" not in cls.__name__.lower())


def call(op: ModuleType, client: Any, *path_args: str) -> Any:
    """`op.sync_detailed` with the path parameters in order (they come before `*`)."""
    positional = [
        p
        for p in inspect.signature(op.sync_detailed).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) != len(path_args):
        raise CheckFailed(
            f"{op.__name__}.sync_detailed takes path parameters "
            f"{[p.name for p in positional]}, the check passes {list(path_args)}"
        )
    return op.sync_detailed(*path_args, client=client)


def error_code(package: str, response: Any, what: str, strict: bool, notes: list[str]) -> str:
    """The `error.code` of an error answer, read through the generated error model."""
    parsed = response.parsed
    if not (is_model(parsed) and hasattr(parsed, "error")):
        status = int(response.status_code)
        note = (
            f"{what}: the document declares no error body for HTTP {status} "
            f"(the generated client parsed {type(parsed).__name__})"
        )
        if strict:
            raise CheckFailed(note)
        notes.append(note)
        candidates = error_models(package)
        if not candidates:
            raise CheckFailed(f"{note}, and it has no error model (one with an `error` field)")
        body = json.loads(response.content)
        errors = []
        for cls in candidates:
            try:
                parsed = cls.from_dict(body)
                break
            except Exception as e:  # noqa: BLE001 - any parse failure is the finding
                errors.append(f"{cls.__name__}: {e!r}")
        else:
            raise CheckFailed(
                f"{what}: body {response.content[:300]!r} parses into no error model: {errors}"
            )
    code = parsed.error.code
    print(f"client_check:    parsed into {type(parsed).__name__}", flush=True)
    return str(code.value if isinstance(code, Enum) else code)


def expect_status(response: Any, status: int, what: str) -> None:
    if int(response.status_code) != status:
        raise CheckFailed(
            f"{what}: expected HTTP {status}, got {int(response.status_code)}: "
            f"{response.content[:500]!r}"
        )


LAST_RESPONSE: list[Any] = []


def remember_response(response: Any) -> None:
    response.read()
    LAST_RESPONSE[:] = [response]


def describe_last_response() -> str:
    if not LAST_RESPONSE:
        return "no answer received"
    r = LAST_RESPONSE[0]
    return f"last answer: {r.request.method} {r.request.url.path} -> HTTP {r.status_code}: " + (
        r.content[:2000].decode("utf-8", "replace")
    )


def run_checks(args: argparse.Namespace, package_dir: Path) -> list[str]:
    sys.path.insert(0, str(package_dir.parent))
    pkg = importlib.import_module(PACKAGE)
    notes: list[str] = []
    # trust_env=False: a proxy from the environment must not come between us and the daemon.
    # The event hook keeps the last answer, shown when the generated code cannot parse it.
    httpx_args = {"trust_env": False, "event_hooks": {"response": [remember_response]}}
    authed = pkg.AuthenticatedClient(
        base_url=args.url, token=args.token, timeout=30.0, httpx_args=httpx_args
    )
    anonymous = pkg.Client(base_url=args.url, timeout=30.0, httpx_args=httpx_args)
    list_bases = find_operation(PACKAGE, package_dir, "get", "/api/v1/bases")
    get_base = find_operation(PACKAGE, package_dir, "get", "/api/v1/bases/{selector}")

    what = "(a) GET /api/v1/bases"
    r = call(list_bases, authed)
    expect_status(r, 200, what)
    if not isinstance(r.parsed, list):
        raise CheckFailed(f"{what}: parsed into {type(r.parsed).__name__}, not a list")
    bad = [type(b).__name__ for b in r.parsed if not (is_model(b) and hasattr(b, "name"))]
    if bad:
        raise CheckFailed(f"{what}: items parsed into {bad}, not a generated model with a name")
    names = [b.name for b in r.parsed]
    models = sorted({type(b).__name__ for b in r.parsed})
    print(f"client_check: ok {what}: {len(names)} base(s) {names} {models}", flush=True)
    if args.expect_base is not None:
        if args.expect_base not in names:
            raise CheckFailed(f"{what}: base {args.expect_base!r} not listed")
        what_one = f"GET /api/v1/bases/{args.expect_base}"
        one = call(get_base, authed, args.expect_base)
        expect_status(one, 200, what_one)
        listed = type(r.parsed[names.index(args.expect_base)])
        if type(one.parsed) is not listed or one.parsed.name != args.expect_base:
            raise CheckFailed(f"{what_one}: parsed into {one.parsed!r}, not a {listed.__name__}")
        print(f"client_check: ok {what_one}: {listed.__name__} id {one.parsed.id}", flush=True)

    what = "(b) GET /api/v1/bases/no-such-base"
    r = call(get_base, authed, "no-such-base")
    expect_status(r, 404, what)
    code = error_code(PACKAGE, r, what, args.strict, notes)
    if code != "not-found":
        raise CheckFailed(f"{what}: error.code is {code!r}, expected 'not-found'")
    print(f"client_check: ok {what}: error.code {code}", flush=True)

    what = "(c) GET /api/v1/bases without a token"
    r = call(list_bases, anonymous)
    expect_status(r, 401, what)
    code = error_code(PACKAGE, r, what, args.strict, notes)
    if code != "unauthorized":
        raise CheckFailed(f"{what}: error.code is {code!r}, expected 'unauthorized'")
    print(f"client_check: ok {what}: error.code {code}", flush=True)
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("openapi", type=Path, help="the OpenAPI document (JSON)")
    parser.add_argument(
        "url",
        nargs="?",
        default=os.environ.get("CLOUDLET_URL"),
        help="daemon base URL (default: $CLOUDLET_URL)",
    )
    parser.add_argument(
        "token",
        nargs="?",
        default=os.environ.get("CLOUDLET_TOKEN"),
        help="API token (default: $CLOUDLET_TOKEN)",
    )
    parser.add_argument(
        "--expect-base", metavar="NAME", help="also check that base NAME is listed and fetchable"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail when an answer's status is not declared in the document",
    )
    parser.add_argument(
        "--fail-on-generator-warnings",
        action="store_true",
        help="fail when openapi-python-client skips part of the document",
    )
    args = parser.parse_args()
    if not args.url or not args.token:
        parser.print_usage(sys.stderr)
        fail("daemon URL and token are required (arguments or CLOUDLET_URL/CLOUDLET_TOKEN)", 2)
    if not args.openapi.is_file():
        fail(f"no OpenAPI document at {args.openapi}", 2)
    ensure_tools()
    spec = args.openapi.resolve()
    with tempfile.TemporaryDirectory(prefix="cloudlet-openapi-client-") as tmp:
        package_dir = generate(spec, Path(tmp), args.fail_on_generator_warnings)
        try:
            notes = run_checks(args, package_dir)
        except CheckFailed as e:
            fail(str(e))
        except Exception as e:  # noqa: BLE001 - report anything the generated code raises
            import traceback

            traceback.print_exc()
            hint = ""
            if isinstance(e, KeyError):
                hint = f" (field {e} is required by the document but missing from the answer)"
            fail(f"the generated client raised {e!r}{hint}; {describe_last_response()}")
    for note in notes:
        print(f"client_check: NOTE: {note}", flush=True)
    print("client_check: all checks passed", flush=True)


if __name__ == "__main__":
    main()
