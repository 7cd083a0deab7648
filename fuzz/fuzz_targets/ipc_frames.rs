//! The master–worker IPC stream: length-prefixed JSON frames, read until the
//! stream ends or fails, once as the worker reads them (`ToWorker`) and once
//! as the master does (`ToMaster`), delivered a few bytes at a time as a
//! socket would. Every message read must encode to a frame that reads back
//! as the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sockhive_fuzz::{block_on, split_once, TrickleReader};
use sockhive_shared::ipc::{encode, read_message, ToMaster, ToWorker};

fuzz_target!(|data: &[u8]| {
    // The read sizes go first so the frames themselves stay easy to mutate.
    let (sizes, stream) = split_once(data, b'\n');
    let sizes = &sizes[..sizes.len().min(8)];
    read_all::<ToWorker>(stream, sizes);
    read_all::<ToMaster>(stream, sizes);
});

fn read_all<T: Serialize + DeserializeOwned + std::fmt::Debug>(stream: &[u8], sizes: &[u8]) {
    let mut reader = TrickleReader::new(stream, sizes);
    while let Ok(Some(message)) = block_on(read_message::<_, T>(&mut reader)) {
        let frame = encode(&message).expect("a message read encodes");
        let again = block_on(read_message::<_, T>(&mut frame.as_slice()))
            .unwrap_or_else(|error| panic!("{message:?} re-encoded does not read: {error}"))
            .expect("one frame");
        let again = encode(&again).expect("encodes");
        // Compared as JSON values: maps inside (the config) need not keep their order.
        let json = |frame: &[u8]| serde_json::from_slice::<serde_json::Value>(&frame[4..]).unwrap();
        assert_eq!(
            json(&frame),
            json(&again),
            "{message:?} changes when re-encoded"
        );
    }
}
