//! FERRY UID lookups against a local HTTPS server that, like FERRY, requires a client
//! certificate signed by a CA it trusts. FERRY itself cannot run here; the server speaks
//! its `getUserInfo` answer format.

#![expect(
    clippy::disallowed_methods,
    reason = "the test starts openssl and its server itself"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use managed_tokens_core::ferry::{Ferry, lookup_uid};

const SERVER: &str = r#"
import http.server, json, ssl, sys, urllib.parse
directory, port_file = sys.argv[1], sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        user = urllib.parse.parse_qs(url.query).get("username", [""])[0]
        if url.path != "/getUserInfo":
            self.send_error(404); return
        if user == "dunepro":
            body = {"ferry_status": "success", "ferry_error": [], "ferry_output": {"uid": 50123, "username": user}}
        else:
            body = {"ferry_status": "failure", "ferry_error": [f"User {user} does not exist."], "ferry_output": None}
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def log_message(self, *args): pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{directory}/server.pem", f"{directory}/server.key")
context.load_verify_locations(f"{directory}/ca/ca.pem")
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
open(port_file + ".tmp", "w").write(str(server.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for localhost and a client certificate, in `dir`.
fn certificates(dir: &Path) {
    std::fs::create_dir(dir.join("ca")).unwrap();
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
    for (name, subject) in [
        ("server", "/CN=localhost"),
        ("client", "/CN=managed-tokens.example"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
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
                &format!("{name}.pem"),
            ],
        );
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> (Server, u16) {
    let port_file = dir.join("port");
    let child = Command::new("python3")
        .args(["-c", SERVER])
        .arg(dir)
        .arg(&port_file)
        .spawn()
        .unwrap();
    let server = Server(child);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            return (server, port.trim().parse().unwrap());
        }
        assert!(Instant::now() < end, "the FERRY stand-in did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn looks_up_uids_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_server, port) = start(dir.path());
    let ferry = Ferry {
        url: format!("https://localhost:{port}"),
        ca_path: Some(dir.path().join("ca")),
        cert: dir.path().join("client.pem"),
        key: dir.path().join("client.key"),
    };
    let timeout = Duration::from_secs(10);
    assert_eq!(lookup_uid(&ferry, "dunepro", timeout).unwrap(), Some(50123));
    assert_eq!(lookup_uid(&ferry, "nobody", timeout).unwrap(), None);

    // The server refuses a client whose certificate it did not issue.
    let stranger = dir.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    certificates(&stranger);
    let refused = Ferry {
        cert: stranger.join("client.pem"),
        key: stranger.join("client.key"),
        ..ferry.clone()
    };
    let err = lookup_uid(&refused, "dunepro", timeout).unwrap_err();
    assert!(
        format!("{err:#}").contains("FERRY request for `dunepro`"),
        "{err:#}"
    );

    let missing = Ferry {
        cert: dir.path().join("nope.pem"),
        ..ferry
    };
    let err = lookup_uid(&missing, "dunepro", timeout).unwrap_err();
    assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");
}
