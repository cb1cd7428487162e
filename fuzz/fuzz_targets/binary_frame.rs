//! A binary frame as a client sends it over the WebSocket (or base64 in a REST batch): v3
//! protobuf. Decoding never panics; what decodes passes the ingress checks and the ack without
//! panicking, comes back equal through v3 and the internal JSON form, and is written in the
//! text encodings without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samvad_protocol::{Encoding, Limits, Message, decode_binary, encode_binary, encode_text};

const UNLIMITED: Limits = Limits {
    max_bytes: usize::MAX,
};

fuzz_target!(|frame: &[u8]| {
    let Ok(message) = decode_binary(frame, &Limits::DEFAULT) else {
        return;
    };
    let _ = message.validate_from_client();
    let _ = encode_binary(&message.server_ack());
    let back = decode_binary(&encode_binary(&message), &UNLIMITED).expect("v3 reads back");
    assert_eq!(back, message, "v3 is not stable");
    let internal = serde_json::to_string(&message).expect("the internal form is written");
    let back: Message = serde_json::from_str(&internal).expect("the internal form reads back");
    assert_eq!(back, message, "the internal form loses something");
    for encoding in [Encoding::V1, Encoding::V2_0, Encoding::V2_1] {
        let _ = encode_text(&message, encoding);
    }
});
