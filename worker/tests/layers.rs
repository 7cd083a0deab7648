//! The worker's architecture, checked: every `crate::` import points down the
//! layers of `src/lib.rs`, and the protocol adapters hold no lifecycle code.
//! Test modules are exempt (the socket core's tests drive real adapters).

use std::path::{Path, PathBuf};

/// The layers, top first; a module may import only modules of a lower layer.
const LAYERS: &[&[&str]] = &[
    &["lib", "worker"],
    // Beside the front door: the worker's heap, watched over its connection count.
    &["front_door", "heap_trim"],
    &["protocol"],
    &["socket"],
    &["context"],
    // The app's hooks: the trait the core dispatches through, and its HTTP client.
    &["app"],
    &["hub"],
    // The registry pre-creates a series for every refusal reason, auth's included.
    &["metrics"],
    &["auth"],
    &["master_link", "transport", "json_text", "http_client"],
];

/// Names the crate root re-exports, and the module each comes from.
const ROOT_EXPORTS: &[(&str, &str)] = &[("Worker", "context"), ("WorkerMetrics", "metrics")];

/// Lifecycle that belongs to the socket core, never to an adapter.
const NOT_IN_ADAPTERS: &[&str] = &[
    "select!",
    "sleep",
    "Instant",
    "CancellationToken",
    ".sockets",
    "Outbox",
    "fn finish",
    "write_raw_close",
    "linger(",
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of tests/layers.rs"))
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Each source file's top-level module and its code without test modules or comments.
fn production_code() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = Path::new(first.as_os_str())
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]") {
                Some(at) => &text[..at],
                None => &text,
            };
            // Comments may point anywhere (a doc link up is no dependency).
            let code = code
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            (module, path, code)
        })
        .collect()
}

/// The crate modules a file names through `crate::`.
fn imported_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let module = ROOT_EXPORTS
            .iter()
            .find(|(export, _)| *export == name)
            .map_or(name.clone(), |(_, module)| module.to_string());
        if !module.is_empty() {
            found.push(module);
        }
    }
    found
}

#[test]
fn every_crate_import_points_down_the_layers() {
    let mut upward = Vec::new();
    for (module, path, code) in production_code() {
        let own = layer_of(&module);
        for imported in imported_modules(&code) {
            if imported != module && layer_of(&imported) <= own {
                upward.push(format!(
                    "{}: `{module}` imports `{imported}`",
                    path.display()
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn protocol_adapters_hold_no_lifecycle_and_stay_small() {
    for (module, path, code) in production_code() {
        if module != "protocol" {
            continue;
        }
        for word in NOT_IN_ADAPTERS {
            assert!(
                !code.contains(word),
                "{} contains `{word}`: lifecycle belongs to the socket core",
                path.display()
            );
        }
        // Adapters and codec pieces alike (tests apart): a file a reader
        // takes in at once.
        let lines = code.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(lines < 500, "{} has {lines} lines of code", path.display());
    }
}

#[test]
fn no_worker_code_compares_an_error_name_as_a_string() {
    for (_, path, code) in production_code() {
        for pattern in ["name == \"", "name != \""] {
            assert!(
                !code.contains(pattern),
                "{} compares an error name as a string",
                path.display()
            );
        }
    }
}

#[test]
fn the_check_itself_sees_an_upward_import() {
    assert_eq!(
        imported_modules("use crate::socket::Out; crate::Worker"),
        ["socket", "context"]
    );
    assert!(layer_of("socket") < layer_of("hub"));
}
