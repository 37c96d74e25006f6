//! Embeds hls.js (the LL-HLS fallback of the player) into the binary.
//!
//! ```text
//!  web/node_modules/hls.js/dist/hls.min.mjs ─┐ (after `npm ci` in web/)
//!  registry.npmjs.org tarball, sha512 from  ──┴─► OUT_DIR/hls.min.mjs (+ .gz) ─► include_bytes!
//!  web/package-lock.json (cached in OUT_DIR)
//!  web/assets/* ─────────────────────────────────► OUT_DIR/gz/*.gz ─► include_bytes!
//! ```
//!
//! The version and the tarball's sha512 come from `web/package-lock.json`:
//! nothing is fetched that the lock file does not pin, and nothing third-party
//! is copied into the repository. When neither source works (an offline
//! build without `npm ci`), the build still succeeds: it warns, embeds an
//! empty file, and the player then falls back only to native HLS (Safari).
//! The full build (`hls.min.mjs`) is used, not `hls.light`: the light build
//! has no alternate-audio support, and Dionysia's HLS serves audio as its
//! own rendition.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha512};

/// The ES-module build, so the player can `import()` it lazily (also across
/// origins, as `/assets/` answers with CORS).
const FILE: &str = "hls.min.mjs";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let lock = manifest.join("package-lock.json");
    let local = manifest.join("node_modules/hls.js/dist").join(FILE);
    println!("cargo:rerun-if-changed={}", lock.display());
    // A missing file would rerun this script (and its download) on every
    // build: watch web/ instead until `npm ci` has made it.
    let watched = if local.exists() { &local } else { &manifest };
    println!("cargo:rerun-if-changed={}", watched.display());
    println!("cargo:rerun-if-env-changed=DIONYSIA_WEB_OFFLINE");

    let js = match hls_js(&lock, &local, &out) {
        Ok(js) => js,
        Err(why) => {
            println!(
                "cargo:warning=hls.js is not embedded ({why}); the player will fall back to \
                 native HLS only (Safari). Run `npm ci` in web/ or build with network access."
            );
            Vec::new()
        }
    };
    std::fs::write(out.join(FILE), &js).expect("write hls.js");
    std::fs::write(out.join(format!("{FILE}.gz")), gzip(&js)).expect("write hls.js.gz");

    // Our own assets, gzipped too (served to clients that accept gzip).
    let assets = manifest.join("assets");
    println!("cargo:rerun-if-changed={}", assets.display());
    let gz_dir = out.join("gz");
    std::fs::create_dir_all(&gz_dir).expect("create OUT_DIR/gz");
    for entry in std::fs::read_dir(&assets).expect("read web/assets") {
        let path = entry.expect("read web/assets").path();
        if let (Some(name), Ok(bytes)) = (path.file_name(), std::fs::read(&path)) {
            let mut target = name.to_os_string();
            target.push(".gz");
            std::fs::write(gz_dir.join(target), gzip(&bytes)).expect("write a gzipped asset");
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// hls.js: from node_modules, or from the cached or
/// downloaded tarball the lock file pins.
fn hls_js(lock: &Path, local: &Path, out: &Path) -> Result<Vec<u8>, String> {
    let (version, integrity, resolved) = pinned(lock)?;
    if let Ok(js) = std::fs::read(local) {
        let installed = local
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("package.json"));
        let same = installed
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|text| json_field(&text, "version").as_deref() == Some(&version));
        if same {
            return Ok(js);
        }
        println!("cargo:warning=web/node_modules/hls.js is not version {version}: ignored");
    }
    let cached = out.join(format!("hls.js-{version}.tgz"));
    let tarball = match std::fs::read(&cached) {
        Ok(bytes) if verify(&bytes, &integrity).is_ok() => bytes,
        _ => {
            if std::env::var_os("DIONYSIA_WEB_OFFLINE").is_some() {
                return Err("DIONYSIA_WEB_OFFLINE is set".into());
            }
            let bytes = download(&resolved)?;
            verify(&bytes, &integrity)?;
            std::fs::write(&cached, &bytes).map_err(|e| format!("cache tarball: {e}"))?;
            bytes
        }
    };
    extract(&tarball, &format!("package/dist/{FILE}"))
}

/// The version, integrity and tarball URL of hls.js in the lock file.
fn pinned(lock: &Path) -> Result<(String, String, String), String> {
    let text = std::fs::read_to_string(lock).map_err(|e| format!("{}: {e}", lock.display()))?;
    let start = text
        .find("\"node_modules/hls.js\"")
        .ok_or("package-lock.json has no node_modules/hls.js")?;
    let entry = &text[start..];
    let entry = &entry[..entry.find('}').unwrap_or(entry.len())];
    let version = json_field(entry, "version").ok_or("no hls.js version in the lock file")?;
    let integrity = json_field(entry, "integrity").ok_or("no hls.js integrity in the lock file")?;
    let resolved = json_field(entry, "resolved")
        .unwrap_or_else(|| format!("https://registry.npmjs.org/hls.js/-/hls.js-{version}.tgz"));
    if !resolved.starts_with("https://registry.npmjs.org/") {
        return Err(format!("unexpected tarball URL {resolved}"));
    }
    Ok((version, integrity, resolved))
}

/// The string value of `"name": "..."` in a flat piece of JSON.
fn json_field(text: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let rest = &text[text.find(&key)? + key.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// Checks an npm `sha512-<base64>` integrity string.
fn verify(bytes: &[u8], integrity: &str) -> Result<(), String> {
    let expected = integrity
        .strip_prefix("sha512-")
        .ok_or_else(|| format!("unsupported integrity {integrity}"))?;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(expected)
        .map_err(|e| format!("integrity is not base64: {e}"))?;
    if Sha512::digest(bytes).as_slice() == expected.as_slice() {
        Ok(())
    } else {
        Err("the tarball's sha512 does not match package-lock.json".into())
    }
}

fn download(url: &str) -> Result<Vec<u8>, String> {
    let response = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .get(url)
        .call()
        .map_err(|e| format!("download {url}: {e}"))?;
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(64 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("download {url}: {e}"))?;
    Ok(bytes)
}

fn extract(tarball: &[u8], wanted: &str) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let entries = archive.entries().map_err(|e| format!("tarball: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("tarball: {e}"))?;
        let is_it = entry
            .path()
            .map(|p| p == Path::new(wanted))
            .unwrap_or(false);
        if is_it {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("tarball: {e}"))?;
            return Ok(bytes);
        }
    }
    Err(format!("{wanted} is not in the tarball"))
}
