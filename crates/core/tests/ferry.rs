//! FERRY UID lookups against the FERRY stand-in of the test support crate: an HTTPS
//! server that requires a client certificate, as FERRY does.

use std::time::Duration;

use managed_tokens_core::ferry::{Ferry, lookup_uid};
use managed_tokens_test_support::ferry::{FerryStandIn, certificates};

#[test]
fn looks_up_uids_with_a_client_certificate() {
    let server = FerryStandIn::start(&[("dunepro", 50123)]);
    let ferry = Ferry {
        url: server.url.clone(),
        ca_path: Some(server.ca_path()),
        cert: server.cert(),
        key: server.key(),
    };
    let timeout = Duration::from_secs(10);
    assert_eq!(lookup_uid(&ferry, "dunepro", timeout).unwrap(), Some(50123));
    assert_eq!(lookup_uid(&ferry, "nobody", timeout).unwrap(), None);
    assert_eq!(server.requests(), ["dunepro", "nobody"]);

    // The server refuses a client whose certificate it did not issue.
    let stranger = tempfile::tempdir().unwrap();
    certificates(stranger.path());
    let refused = Ferry {
        cert: stranger.path().join("client.pem"),
        key: stranger.path().join("client.key"),
        ..ferry.clone()
    };
    let err = lookup_uid(&refused, "dunepro", timeout).unwrap_err();
    assert!(
        format!("{err:#}").contains("FERRY request for `dunepro`"),
        "{err:#}"
    );

    let missing = Ferry {
        cert: stranger.path().join("nope.pem"),
        ..ferry
    };
    let err = lookup_uid(&missing, "dunepro", timeout).unwrap_err();
    assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");
}
