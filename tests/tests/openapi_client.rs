//! The checked-in OpenAPI document drives a generated client: `tests/openapi/client_check.py`
//! generates a Python client from `docs/openapi.json` with openapi-python-client and, against
//! the real daemon (no VM; one synthetic base registered), lists the bases, fetches one, and
//! reads the `not-found` and `unauthorized` error codes through the generated models (both
//! answers must be declared in the document: `--strict`).
//! Needs python3 and the generator: `scripts/setup-host.sh` installs them (a missing one
//! fails the test, it is not skipped).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use cloudlet_e2e::daemon::TempDir;
use cloudlet_e2e::synthetic::synthetic_vm;
use cloudlet_e2e::Daemon;
use cloudlet_engine::testkit::WorkloadSpec;

/// `client_check.py`'s exit status when the generator or its dependencies are missing.
const MISSING_TOOLS: i32 = 3;

#[test]
fn generated_python_client_talks_to_the_daemon() {
    let tmp = TempDir::new("openapi-client").unwrap();
    let files = tmp.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let vm = synthetic_vm(&files, &WorkloadSpec::small(7)).unwrap();
    let import = files.display().to_string();
    let d = Daemon::start_in(
        &tmp.0.join("data"),
        &[("CLOUDLET_IMPORT_DIRS", import.as_str())],
    )
    .unwrap();
    vm.add_base(&d, "syn", &[]).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let url = format!("http://{}", d.addr);
    let out = Command::new("python3")
        .current_dir(&root)
        .args(["tests/openapi/client_check.py", "docs/openapi.json"])
        .args([url.as_str(), d.token.as_str()])
        // --strict: the 404 and 401 answers must be declared, parsed by the generated code.
        .args(["--expect-base", "syn", "--strict"])
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("python3 is not installed: run scripts/setup-host.sh as root")
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    if out.status.code() == Some(MISSING_TOOLS) {
        panic!(
            "openapi-python-client is not installed: run scripts/setup-host.sh as root\n{stderr}"
        );
    }
    assert!(
        out.status.success(),
        "tests/openapi/client_check.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\
         \n--- daemon log\n{}",
        out.status,
        d.log_text()
    );
}
