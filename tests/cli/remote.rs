//! The remote cache against real servers on loopback: a directory, Debian's nginx with WebDAV
//! PUT, and SeaweedFS's S3 gateway — installed by scripts/install-test-servers.sh and started
//! here on free ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/servers")
}

/// Runs the install script once per test process; a failed install fails the tests.
fn install_servers() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-servers.sh");
        let st = Command::new("bash")
            .arg(script)
            .arg(assets())
            .status()
            .unwrap();
        assert!(st.success(), "scripts/install-test-servers.sh failed");
        assets()
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, path: &str, limit: Duration) {
    assert!(
        wait_until(port, path, limit),
        "server on port {port} did not come up within {limit:?}"
    );
}

fn wait_until(port: u16, path: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ureq_like_get(port, path) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Whether an HTTP GET of `path` gets any HTTP answer (without an HTTP client dependency).
fn ureq_like_get(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1."))
}

/// An HTTP request with a body, for creating an S3 bucket (anonymous SeaweedFS accepts it).
fn http_put(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A server process killed when dropped.
struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// nginx serving a WebDAV-writable root. `rate` throttles responses (bytes/s, 0 = none).
    fn nginx(rate: u64) -> Server {
        install_servers();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        let root_user = if unsafe_geteuid_is_root() {
            "user root;"
        } else {
            ""
        };
        let limit = if rate > 0 {
            format!("limit_rate {rate};")
        } else {
            String::new()
        };
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "{root_user}\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    client_max_body_size 0;\n    location / {{\n      dav_methods PUT DELETE MKCOL;\n      create_full_put_path on;\n      dav_access user:rw group:r all:r;\n      {limit}\n    }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        wait_for(port, "/", Duration::from_secs(10));
        Server {
            child,
            port,
            _dir: dir,
        }
    }

    /// SeaweedFS (master, volume, filer, S3 gateway) with an empty bucket `forge`.
    fn seaweed() -> Server {
        let bin = install_servers().join("bin/weed");
        let dir = tempfile::tempdir().unwrap();
        // Its gRPC ports are the HTTP ports + 10000: pick ports that leave room.
        let pick = || loop {
            let p = free_port();
            if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                return p;
            }
        };
        let (master, volume, filer, s3) = (pick(), pick(), pick(), pick());
        let child = Command::new(bin)
            .arg("server")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-filer",
                "-s3",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-s3.port={s3}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("weed.log")).unwrap())
            .spawn()
            .expect("weed starts");
        if !wait_until(s3, "/", Duration::from_secs(120)) {
            let log = std::fs::read_to_string(dir.path().join("weed.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "SeaweedFS did not come up on port {s3}; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let t = Instant::now();
        loop {
            let answer = http_put(s3, "/forge");
            if answer.starts_with("HTTP/1.1 200")
                || answer.starts_with("HTTP/1.0 200")
                || answer.contains("BucketAlreadyExists")
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "cannot create the bucket: {answer}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        Server {
            child,
            port: s3,
            _dir: dir,
        }
    }
}

fn unsafe_geteuid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Two stages: a 20 MB file plus small ones, and a stage reading it.
const SHARED: &str = r#"
stages:
  gen:
    cmd: head -c 20000000 /dev/zero | tr '\0' 'x' > ${out}/big && seq 1 500 > ${out}/small && mkdir ${out}/d && echo a > ${out}/d/a && echo gen >> exec.log
  use:
    cmd: wc -c < ${stages.gen}/big > ${out}/n && cat ${stages.gen}/small | wc -l >> ${out}/n && echo use >> exec.log
"#;

fn with_env(mut c: Command, env: &[(&str, String)]) -> Command {
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run_in(ws: &Ws, args: &[&str], env: &[(&str, String)]) -> Run {
    let r = Run::from(with_env(ws.cmd(args), env).output().unwrap());
    assert_eq!(r.code, 0, "forge {args:?}:\n{}\n{}", r.stdout, r.stderr);
    r
}

/// The second workspace pulls every stage the first ran and executes none.
fn second_workspace_pulls_everything(url: &str, env: &[(&str, String)]) {
    let a = Ws::new(SHARED);
    let r = run_in(&a, &["--remote", url, "run", "--push"], env);
    assert_eq!(r.executed(), ["gen", "use"], "{}", r.stdout);

    let b = Ws::new(SHARED);
    let st = run_in(&b, &["--remote", url, "status", "--json"], env);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v[0]["stage"], "gen");
    assert_eq!(
        v[0]["on_remote"], true,
        "status shows what the remote can supply: {}",
        st.stdout
    );

    let r = run_in(&b, &["--remote", url, "run"], env);
    assert_eq!(r.states()["gen"], "pulled", "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.states()["use"], "pulled");
    assert!(
        !b.path("exec.log").exists(),
        "nothing executed in the second workspace"
    );
    assert_eq!(tree(&a.path("artifacts")), tree(&b.path("artifacts")));
    assert!(
        run_in(&b, &["run"], &[])
            .states()
            .values()
            .all(|s| s == "fresh")
    );
}

#[test]
fn shared_directory_remote() {
    let remote = tempfile::tempdir().unwrap();
    second_workspace_pulls_everything(&format!("file://{}", remote.path().display()), &[]);
}

#[test]
fn shared_nginx_webdav_remote() {
    let nginx = Server::nginx(0);
    second_workspace_pulls_everything(&format!("http://127.0.0.1:{}/cache", nginx.port), &[]);
}

#[test]
fn shared_s3_remote() {
    let weed = Server::seaweed();
    let env = [(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", weed.port),
    )];
    second_workspace_pulls_everything("s3://forge/team-cache", &env);
}

#[test]
fn explicit_push_and_pull() {
    let remote = tempfile::tempdir().unwrap();
    let yaml = format!(
        "remote:\n  url: file://{}\n{SHARED}",
        remote.path().display()
    );
    let a = Ws::new(&yaml);
    let r = a.ok(&["run"]);
    assert_eq!(r.executed(), ["gen", "use"]);
    assert!(
        walk(remote.path()).is_empty(),
        "nothing is pushed without push: true or --push"
    );
    let pushed = a.ok(&["push", "gen"]);
    assert!(
        pushed.stdout.contains("pushed   gen") && pushed.stdout.contains("3 objects"),
        "{}",
        pushed.stdout
    );
    assert!(
        a.ok(&["push", "gen"]).stdout.contains("0 objects"),
        "pushing again moves nothing"
    );

    let b = Ws::new(&yaml);
    let r = b.ok(&["pull"]);
    assert_eq!(r.states()["gen"], "pulled", "{}", r.stdout);
    assert_eq!(
        r.states()["use"],
        "missing",
        "use was never pushed: {}",
        r.stdout
    );
    assert!(!b.path("exec.log").exists(), "pull executes nothing");
    a.ok(&["push"]);
    assert_eq!(b.ok(&["pull"]).states()["use"], "pulled");
}

#[test]
fn corrupt_remote_objects_and_escaping_manifests_are_refused() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let a = Ws::new(SHARED);
    a.ok(&["--remote", &url, "run", "--push"]);

    // Flip the bytes of every object on the remote: the pull is refused, gen runs locally.
    for obj in walk(&remote.path().join("objects")) {
        std::fs::write(&obj, b"corrupted").unwrap();
    }
    let b = Ws::new(SHARED);
    let r = b.ok(&["--remote", &url, "run"]);
    assert_eq!(r.executed(), ["gen", "use"], "{}", r.stdout);
    assert!(r.stderr.contains("is corrupt"), "{}", r.stderr);
    assert_eq!(tree(&a.path("artifacts")), tree(&b.path("artifacts")));
    // Nothing corrupt entered the local store.
    assert_store_intact(&b.path("cache/objects"));

    // A run entry whose manifest points outside the output directory.
    let lock: serde_json::Value = serde_json::from_str(&a.read("forge.lock")).unwrap();
    let key = lock["stages"]["gen"]["key"].as_str().unwrap();
    let entry_path = remote.path().join(format!("runs/{key}.json"));
    let mut entry: forge::store::RunEntry =
        serde_json::from_slice(&std::fs::read(&entry_path).unwrap()).unwrap();
    entry.manifest[0].path = "../../escaped".into();
    entry.out = forge::hash::manifest_digest(&entry.manifest);
    std::fs::write(&entry_path, serde_json::to_vec(&entry).unwrap()).unwrap();
    let c = Ws::new(SHARED);
    let r = c.ok(&["--remote", &url, "run"]);
    assert!(
        r.stderr.contains("escapes the output directory"),
        "{}",
        r.stderr
    );
    assert_eq!(r.states()["gen"], "ran");
    assert!(!c.dir.path().parent().unwrap().join("escaped").exists());
}

#[test]
fn an_unreachable_remote_degrades_to_local_work() {
    let port = free_port(); // nothing listens there
    let ws = Ws::new(SHARED);
    let t = Instant::now();
    let r = ws.ok(&[
        "--remote",
        &format!("http://127.0.0.1:{port}/cache"),
        "run",
        "--push",
    ]);
    assert_eq!(r.executed(), ["gen", "use"]);
    assert_eq!(
        r.stderr.matches("warning: remote").count(),
        1,
        "one warning, then the remote is left alone: {}",
        r.stderr
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "retries are bounded: {:?}",
        t.elapsed()
    );
}

#[test]
fn killing_the_server_mid_pull_leaves_a_consistent_workspace() {
    let big = r#"
stages:
  gen:
    cmd: head -c 60000000 /dev/urandom > ${out}/big && echo gen >> exec.log
"#;
    // Throttled to ~15 MB/s so the kill lands mid-transfer.
    let mut nginx = Server::nginx(15_000_000);
    let url = format!("http://127.0.0.1:{}/cache", nginx.port);
    let a = Ws::new(big);
    a.ok(&["--remote", &url, "run", "--push"]);

    let b = Ws::new(big);
    let pull = b.spawn(&["--remote", &url, "pull"]);
    std::thread::sleep(Duration::from_millis(1500));
    nginx.child.kill().unwrap();
    nginx.child.wait().unwrap();
    let out = pull.wait_with_output().unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.states()["gen"], "missing", "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("warning: remote"), "{}", r.stderr);
    assert!(!b.path("artifacts/gen").exists(), "no partial artifact");
    assert!(
        walk(&b.path("cache/objects")).is_empty(),
        "no partial object in the store"
    );
    assert!(
        walk(&b.path("cache/tmp")).is_empty(),
        "no download leftovers"
    );

    // The server is back (same files, same port): the next pull retries and succeeds.
    let root = nginx._dir.path().display().to_string();
    nginx.child = Command::new("nginx")
        .args(["-p", &root, "-c", &format!("{root}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(nginx.port, "/", Duration::from_secs(10));
    let r = b.ok(&["--remote", &url, "pull"]);
    assert_eq!(r.states()["gen"], "pulled", "{}", r.stdout);
    assert_eq!(
        std::fs::read(a.path("artifacts/gen/big")).unwrap(),
        std::fs::read(b.path("artifacts/gen/big")).unwrap()
    );
    assert!(!b.path("exec.log").exists());
}
