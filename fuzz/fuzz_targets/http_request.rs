//! The HTTP request reader on arbitrary bytes, pipelined: never panics,
//! never returns a body over the limit, always makes progress.
#![no_main]

use api::http::{read_request, MAX_BODY_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    let mut buf = Vec::new();
    let mut interims = 0;
    for _ in 0..64 {
        let before = stream.len() + buf.len();
        match read_request(&mut stream, &mut buf, &mut || {
            interims += 1;
            Ok(())
        }) {
            Ok(req) => {
                assert!(req.body.len() <= MAX_BODY_BYTES);
                assert!(stream.len() + buf.len() < before, "a request consumed no input");
            }
            Err(e) => {
                let status = e.status();
                assert!((400..600).contains(&status), "{status}");
                break;
            }
        }
    }
    assert!(interims <= 64);
});
