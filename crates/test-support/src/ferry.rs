//! A stand-in for FERRY, Fermilab's identity registry, which cannot run here: an HTTPS
//! server that, like FERRY, requires a client certificate issued by a CA it trusts and
//! answers `GET /getUserInfo?username=<account>` in FERRY's JSON format.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = r#"
import http.server, json, ssl, sys, urllib.parse, os
directory, port_file, users = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        user = urllib.parse.parse_qs(url.query).get("username", [""])[0]
        if url.path != "/getUserInfo":
            self.send_error(404); return
        if user in users:
            body = {"ferry_status": "success", "ferry_error": [], "ferry_output": {"uid": users[user], "username": user}}
        else:
            body = {"ferry_status": "failure", "ferry_error": [f"User {user} does not exist."], "ferry_output": None}
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        with open(os.path.join(directory, "requests.log"), "a") as log:
            log.write(user + "\n")
    def log_message(self, *args): pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{directory}/server.pem", f"{directory}/server.key")
context.load_verify_locations(f"{directory}/ca/ca.pem")
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
open(port_file + ".tmp", "w").write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// A running FERRY stand-in; stopped when dropped.
pub struct FerryStandIn {
    dir: tempfile::TempDir,
    child: Child,
    /// `https://localhost:<port>`.
    pub url: String,
}

impl FerryStandIn {
    /// Starts a server that knows `users` (account, UID), with a fresh CA, a server
    /// certificate for localhost and a client certificate it accepts.
    pub fn start(users: &[(&str, u32)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mt-ferry-")
            .tempdir()
            .expect("a temporary directory");
        certificates(dir.path());
        let port_file = dir.path().join("port");
        let users: serde_json::Map<String, serde_json::Value> = users
            .iter()
            .map(|(name, uid)| ((*name).to_string(), (*uid).into()))
            .collect();
        let child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(dir.path())
            .arg(&port_file)
            .arg(serde_json::Value::Object(users).to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 starts");
        let end = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port.trim().to_string();
            }
            assert!(Instant::now() < end, "the FERRY stand-in did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            url: format!("https://localhost:{port}"),
            dir,
            child,
        }
    }

    /// The directory of CA certificates (`ferry.caPath`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// The client certificate the server accepts (`ferry.hostCert`).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// Its key (`ferry.hostKey`).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The accounts asked for so far, in order.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Drop for FerryStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, a server certificate for localhost and a client certificate, in `dir`; also
/// used to make a client certificate the server did not issue.
pub fn certificates(dir: &Path) {
    std::fs::create_dir_all(dir.join("ca")).expect("a CA directory");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca/ca.pem",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("san.ext");
    for (name, subject) in [
        ("server", "/CN=localhost"),
        ("client", "/CN=managed-tokens.example"),
    ] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca/ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                &pem,
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?} failed");
}
