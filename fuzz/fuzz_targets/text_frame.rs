//! A text frame as a client sends it over the WebSocket or in a REST batch: v1, v2.0 or v2.1
//! JSON. Decoding never panics; what decodes passes through the ingress checks and the ack
//! without panicking; and what the server writes of it, it reads back: written in any text
//! encoding and read again, it writes the same frame a second time; through v3 and through the
//! internal JSON form it comes back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samvad_protocol::{
    Encoding, Limits, Message, decode_binary, decode_text, encode_binary, encode_text,
};

const UNLIMITED: Limits = Limits {
    max_bytes: usize::MAX,
};

fuzz_target!(|frame: &str| {
    let Ok(message) = decode_text(frame, &Limits::DEFAULT) else {
        return;
    };
    let _ = message.validate_from_client();
    let _ = encode_text(&message.server_ack(), Encoding::V2_1);
    for encoding in [Encoding::V1, Encoding::V2_0, Encoding::V2_1] {
        let written = encode_text(&message, encoding);
        let read = decode_text(&written, &UNLIMITED)
            .unwrap_or_else(|e| panic!("{encoding:?} frame {written} does not read back: {e}"));
        assert_eq!(
            encode_text(&read, encoding),
            written,
            "{encoding:?} is not stable"
        );
    }
    let back = decode_binary(&encode_binary(&message), &UNLIMITED).expect("v3 reads back");
    assert_eq!(back, message, "v3 loses something");
    let internal = serde_json::to_string(&message).expect("the internal form is written");
    let back: Message = serde_json::from_str(&internal).expect("the internal form reads back");
    assert_eq!(back, message, "the internal form loses something");
});
