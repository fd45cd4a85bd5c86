//! The kernel module's source as a gzip'd tar unpacking to `vmm_clock-VERSION/`, made the
//! same way every time (fixed order, owner, mode and time), so equal sources give equal
//! bytes. Shared with build.rs, which makes it once per build: every seed then carries it
//! without compressing anything at run time. Uses nothing beyond std, flate2 and tar.

/// `files` are (name, contents), in the order they are stored.
pub fn tarball(version: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let top = format!("vmm_clock-{version}");
    let gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_cksum();
    tar.append_data(&mut dir, format!("{top}/"), std::io::empty())?;
    for (name, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("{top}/{name}"), &bytes[..])?;
    }
    tar.into_inner()?.finish()
}
