//! containerd 1.6 (Debian's, private instance) runs containers through the
//! runtime under test: `ctr run --runc-binary <berth-oci>` with the
//! io.containerd.runc.v2 shim, from an OCI image built from the busybox rootfs.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Result, ensure};
use berth_integration::containerd::{Containerd, with_log};
use berth_integration::runtime::binary;
use berth_integration::{LeakCheck, unique_id};

#[test]
fn ctr_run_uses_the_runtime_and_passes_output_and_exit_codes() -> Result<()> {
    let check = LeakCheck::start();
    {
        let c = Containerd::start()?;
        let image = with_log(&c, c.import_busybox())?;
        let bin = binary()?.exec.to_string_lossy().into_owned();
        let runc_root = c.runc_root().to_string_lossy().into_owned();
        let run = |bin: &str, id: &str, cmd: &[&str]| {
            let mut args = vec![
                "run",
                "--rm",
                "--runtime",
                "io.containerd.runc.v2",
                "--runc-binary",
                bin,
                "--runc-root",
                &runc_root,
                &image,
                id,
            ];
            args.extend_from_slice(cmd);
            c.ctr(&args)
        };

        let id = unique_id("ctr-echo");
        let out = with_log(&c, run(&bin, &id, &["echo", "hello-from-berth"]))?;
        ensure!(out.code() == Some(0), "{out}\n{}", c.log());
        assert_eq!(out.stdout, "hello-from-berth\n", "{out}");

        // Through a wrapper that records how the shim calls the runtime.
        let calls = c.dir().join("calls.log");
        let wrapper = c.dir().join("runtime-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\nexec {bin} \"$@\"\n",
                calls.display()
            ),
        )?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        let id = unique_id("ctr-exit");
        let out = with_log(
            &c,
            run(
                wrapper.to_str().unwrap(),
                &id,
                &["sh", "-c", "echo err >&2; exit 3"],
            ),
        )?;
        assert_eq!(out.code(), Some(3), "{out}\n{}", c.log());
        assert!(out.stderr.contains("err"), "{out}");
        let calls = std::fs::read_to_string(&calls)?;
        for sub in ["create", "start", "delete"] {
            assert!(
                calls
                    .lines()
                    .any(|l| l.split_whitespace().any(|w| w == sub) && l.contains(&id)),
                "the shim never ran `{sub}` for {id}:\n{calls}"
            );
        }
        assert!(calls.contains("--root"), "{calls}");

        let tasks = c.ctr(&["tasks", "ls", "-q"])?.check()?;
        assert_eq!(tasks.stdout.trim(), "", "tasks left: {tasks}");
        let ctrs = c.ctr(&["containers", "ls", "-q"])?.check()?;
        assert_eq!(ctrs.stdout.trim(), "", "containers left: {ctrs}");
    }
    // containerd, its shims, cgroups and mounts are gone.
    check.assert_clean(std::time::Duration::from_secs(20))
}
