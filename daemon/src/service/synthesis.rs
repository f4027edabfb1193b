//! Synthesis: base + overlay → the customized VM, resumed (or booted, for a disk-only
//! overlay), its application ports forwarded to fresh host ports.

use std::io::{BufReader, Read};
use std::path::PathBuf;

use cloudlet_api::{Session, SessionKind, SessionState, Synthesize};

use super::idempotency::IdempotencyKey;
use super::intake::{BodyOrigin, IntakeWatch};
use super::overlay::{merge_ports, open_base};
use super::stream_restore::{broke_the_stream, Outcome};
use super::{blocking, chain, Caller, ServiceError, StepTimer};
use crate::store::bases::BaseRecord;
use crate::store::sessions::SessionRecord;
use crate::virt::{boot_xml, forward_port, resume_xml};
use crate::AppState;
use cloudlet_engine::decode::{
    check_fits, decode, decode_primed, decode_streamed, DecodeError, DecodeOutputs,
};
use cloudlet_engine::disk::DiskOutputFormat;
use cloudlet_engine::format::OverlayReader;

/// Maps a decode failure to the error a client sees.
fn decode_error(e: DecodeError) -> ServiceError {
    match &e {
        DecodeError::BaseMismatch { .. }
        | DecodeError::Format(cloudlet_engine::format::FormatError::WrongBase { .. }) => {
            ServiceError::OverlayBaseMismatch(Box::new(e))
        }
        _ if e.is_invalid_input() => ServiceError::OverlayCorrupt(Box::new(e)),
        _ => ServiceError::failed("decoding the overlay", e),
    }
}

/// A permit to run one synthesis (`max_concurrent_syntheses`), held until it ends.
pub type SynthesisSlot = tokio::sync::OwnedSemaphorePermit;

/// A synthesis admitted before its overlay is read: a slot and the base.
#[derive(Debug)]
pub struct SynthesisTicket {
    base: BaseRecord,
    slot: SynthesisSlot,
    owner: Caller,
    key: Option<IdempotencyKey>,
}

impl AppState {
    /// Takes a synthesis slot, or answers `busy` at once (no queueing: a queued device
    /// would hold its upload open and see a slow cloudlet instead of a retry hint).
    pub fn synthesis_slot(&self) -> Result<SynthesisSlot, ServiceError> {
        self.synthesis_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::Busy {
                what: format!(
                    "{} syntheses are running (setting max_concurrent_syntheses)",
                    self.config.max_concurrent_syntheses
                ),
                retry_after_s: 2,
            })
    }

    /// Admits a synthesis whose overlay is the request body: a slot (or `busy` at once)
    /// and the base, both checked before the first byte is read.
    pub async fn admit_synthesis(
        &self,
        caller: &Caller,
        base: &str,
        key: Option<IdempotencyKey>,
    ) -> Result<SynthesisTicket, ServiceError> {
        let slot = self.synthesis_slot()?;
        let base = self.resolve_base(base).await?;
        Ok(SynthesisTicket {
            base,
            slot,
            owner: caller.clone(),
            key,
        })
    }

    /// Synthesizes from overlay bytes streaming in (decoding starts with the first
    /// segment).
    /// `watch` explains a failure caused by the body (too large, stalled, broken, past
    /// the deadline), in the answer and in the failed session alike.
    pub async fn synthesize_stream<R: Read + Send + 'static>(
        &self,
        ticket: SynthesisTicket,
        reader: R,
        watch: &IntakeWatch,
    ) -> Result<Session, ServiceError> {
        let session = self
            .synthesize_from(
                ticket.base,
                reader,
                None,
                (ticket.slot, &ticket.owner),
                Some(watch),
                ticket.key,
            )
            .await?;
        Ok(Session::from(&session))
    }

    /// Synthesizes from an overlay stored here, in an import directory, uploaded, or at an
    /// allowed URL. A device token synthesizes from its own stored overlays or an allowed URL (or the
    /// upload route); local paths and uploads name the operator's files.
    pub async fn synthesize(
        &self,
        caller: &Caller,
        req: Synthesize,
        key: Option<IdempotencyKey>,
    ) -> Result<Session, ServiceError> {
        let session = self.synthesize_request(caller, req, key).await?;
        Ok(Session::from(&session))
    }

    async fn synthesize_request(
        &self,
        caller: &Caller,
        req: Synthesize,
        key: Option<IdempotencyKey>,
    ) -> Result<SessionRecord, ServiceError> {
        if req.overlay_path.is_some() && !caller.is_admin() {
            return Err(ServiceError::Forbidden(
                "overlay_path names the cloudlet's own files: a device token gives overlay_id \
                 (an overlay it made), overlay_url, or sends the overlay to /synthesis/upload"
                    .into(),
            ));
        }
        // First, so that a `busy` answer leaves an uploaded overlay in place for the retry.
        let slot = self.synthesis_slot()?;
        let path = match (&req.overlay_id, &req.overlay_path, &req.overlay_url) {
            (Some(id), None, None) => super::LocalInput::owned_by_daemon(PathBuf::from(
                self.overlay_for(caller, id).await?.file_path,
            )),
            (None, Some(p), None) => self.import_path(std::path::Path::new(p))?,
            (None, None, Some(url)) => {
                return self
                    .synthesize_from_url(&req.base, url, (slot, caller), key)
                    .await
            }
            _ => {
                return Err(ServiceError::InvalidRequest(
                    "give exactly one of overlay_id, overlay_path and overlay_url".into(),
                ))
            }
        };
        let base = self.resolve_base(&req.base).await?;
        let file = super::open_regular(&path).await?;
        self.synthesize_from(
            base,
            BufReader::with_capacity(1 << 20, file),
            req.overlay_id,
            (slot, caller),
            None,
            key,
        )
        .await
    }

    /// Downloads the overlay at `url` (an allowed origin; redirects only to allowed
    /// origins) and synthesizes from it as it arrives.
    async fn synthesize_from_url(
        &self,
        base: &str,
        url: &str,
        admitted: (SynthesisSlot, &Caller),
        key: Option<IdempotencyKey>,
    ) -> Result<SessionRecord, ServiceError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ServiceError::InvalidRequest(format!("overlay_url `{url}`: {e}")))?;
        let allow = self.config.overlay_url_allow.clone();
        if !origin_allowed(&allow, &parsed) {
            return Err(ServiceError::UrlNotAllowed(url.to_string()));
        }
        let base = self.resolve_base(base).await?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > 5 || !origin_allowed(&allow, attempt.url()) {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .connect_timeout(std::time::Duration::from_secs(10))
            // A server that accepts and then stalls is dropped like a stalled upload (408):
            // the intake's own idle timer fires first, this one only backs it up.
            .read_timeout(std::time::Duration::from_secs(
                self.config.body_idle_timeout_s + 5,
            ))
            .build()
            .map_err(|e| ServiceError::failed("building the HTTP client", e))?;
        // A server that accepts and never answers stalls like a body that stops (408), not
        // like one that fails (502); the read timeout above would only fire later.
        let idle_s = self.config.body_idle_timeout_s;
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(idle_s),
            client.get(parsed).send(),
        )
        .await
        .map_err(|_| ServiceError::Timeout { idle_s })?
        .map_err(|e| ServiceError::FetchFailed(chain(&e)))?;
        if !response.status().is_success() {
            return Err(ServiceError::FetchFailed(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        let declared = response.content_length();
        let (reader, watch) = self.intake(response.bytes_stream(), BodyOrigin::Url);
        if declared.is_some_and(|n| n > self.config.max_upload_bytes) {
            return Err(watch.too_large());
        }
        self.synthesize_from(base, reader, None, admitted, Some(&watch), key)
            .await
    }

    /// Synthesizes from overlay bytes read from `reader` (a file, or an upload streaming
    /// in: decoding starts with the first segment).
    async fn synthesize_from<R: Read + Send + 'static>(
        &self,
        base: BaseRecord,
        reader: R,
        overlay_id: Option<String>,
        (_slot, owner): (SynthesisSlot, &Caller),
        watch: Option<&IntakeWatch>,
        key: Option<IdempotencyKey>,
    ) -> Result<SessionRecord, ServiceError> {
        let clock = std::time::Instant::now();
        // A restore of this base fed its pages already (service::synthesis_standby): its
        // directory and VM are this session's if the overlay fits it.
        let mut standby = self.take_synthesis_standby(&base.id).await;
        let (mut session, dir) = match &standby {
            Some(s) => s.session(owner),
            None => self.new_session_with_dir(SessionKind::Synthesis, &base.id, owner)?,
        };
        session.overlay_id = overlay_id;
        let vm = session.vm_name.clone().unwrap_or_default();
        // Known now, so that an operator can find it while the overlay is still decoding.
        session.console_path = Some(dir.join("console.sock").display().to_string());
        session.advance(SessionState::Decoding)?;
        if let Err(e) = self.store.insert_session(&session).await {
            if let Some(s) = standby.take() {
                self.discard_synthesis_standby(s, false).await;
            }
            return Err(e.into());
        }

        let mut timer = StepTimer::default();
        let mut standby_row = None;
        let result = async {
            if let Some(key) = &key {
                self.claim_idempotency_key(key, &session.id).await?;
            }
            let started = StepTimer::begin("decode");
            let engine_base = open_base(&base).await?;
            let disk = dir.join("disk.qcow2");
            let memory = dir.join("memory.save");
            let console = dir.join("console.sock");
            let spec = match &standby {
                Some(s) => s.spec().clone(),
                None => self.session_spec(&base, &vm, &disk, &console, None),
            };
            let template = base.domain_xml.clone();
            let shape = engine_base.shape();
            // The overlay's metadata first: whether it can finish the standby's stream.
            let (overlay, guest_ports, xml) = blocking(move || {
                // The base id and sizes are checked from the metadata's first bytes,
                // before the rest of it is decompressed or sized by it.
                let overlay = OverlayReader::open_for_base(reader, &shape)
                    .map_err(|e| decode_error(e.into()))?;
                let meta = overlay.meta();
                let ports: Vec<u16> = meta
                    .property("guest-ports")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                // The daemon builds the VM's definition; the overlay's domain XML (or,
                // for a disk-only overlay, the base's) only lends it typed values.
                let xml = match &meta.memory {
                    Some(m) => {
                        let saved = m
                            .layout
                            .domain_xml()
                            .map_err(|e| ServiceError::OverlayCorrupt(Box::new(e)))?;
                        resume_xml(saved, m.layout.cookie(), &spec)?
                    }
                    None => boot_xml(&template, &spec)?,
                };
                Ok((overlay, ports, xml))
            })
            .await?;
            check_fits(overlay.meta(), &engine_base).map_err(decode_error)?;
            let has_memory = overlay.meta().memory.is_some();
            let source = match standby.take() {
                Some(s) if s.fits(&xml, overlay.meta()) => {
                    let (row, restore, stream) = s.into_parts();
                    standby_row = Some(row);
                    Some((restore, Source::Primed(Box::new(stream))))
                }
                taken => {
                    if let Some(s) = taken {
                        tracing::info!(session = %session.id, "the synthesis standby does not fit this overlay; restoring without it");
                        self.discard_synthesis_standby(s, true).await;
                    }
                    self.streamed_restore(&base, &dir, &vm, false)?
                        .map(|(restore, open)| (restore, Source::Open(open)))
                }
            };
            let (stream, source) = source.unzip();
            let primed = matches!(source, Some(Source::Primed(_)));
            let decoded = {
                let (memory, disk, xml) = (memory.clone(), disk.clone(), xml.clone());
                let reporter = super::progress::engine_reporter();
                blocking(move || {
                    let outputs = DecodeOutputs {
                        disk: &disk,
                        disk_format: DiskOutputFormat::Qcow2,
                        memory: &memory,
                        domain_xml: Some(&xml),
                        durable: false,
                        threads: 0,
                    };
                    Ok(match source {
                        Some(Source::Primed(stream)) => {
                            decode_primed(overlay, &engine_base, &outputs, *stream, &reporter)
                        }
                        // A disk-only overlay boots: nothing to stream (the opener is
                        // unused).
                        Some(Source::Open(open)) if has_memory => {
                            decode_streamed(overlay, &engine_base, &outputs, open, &reporter)
                        }
                        _ => decode(overlay, &engine_base, &outputs, &reporter),
                    })
                })
                .await
            };
            // Timed now: a streamed restore overlapped the decode, and finishes after it.
            let decoded_ok = matches!(&decoded, Ok(Ok(_)));
            if decoded_ok {
                timer.record("decode", started);
            }
            let restored = match stream {
                Some(s) => {
                    if decoded_ok && s.streamed() {
                        session.advance(SessionState::Restoring)?;
                        self.store.update_session(&session).await?;
                        StepTimer::begin(if primed { "restore_standby" } else { "restore_stream" });
                    }
                    s.outcome().await
                }
                None => Outcome::NotStreamed,
            };
            let summary = match decoded? {
                Ok(summary) => summary,
                // A stream whose reader went away is explained by the restore's error;
                // any other failure (a bad overlay, a full disk) is the cause.
                Err(e) => {
                    if let (true, Outcome::Finished(Err(v), _)) = (broke_the_stream(&e), restored)
                    {
                        tracing::warn!(error = %super::chain(&e), "decode stopped: the restore failed");
                        return Err(v.into());
                    }
                    return Err(decode_error(e));
                }
            };
            session
                .timings
                .0
                .insert("decode_read".into(), ms(summary.read_time));
            session
                .timings
                .0
                .insert("decode_rebuild".into(), ms(summary.rebuild_time));
            session.timings.0.insert(
                "decode_apply".into(),
                ms(summary.apply_time + summary.finish_time),
            );
            session
                .timings
                .0
                .insert("decode_base_pages".into(), ms(summary.base_pages_time));

            if session.state() != SessionState::Restoring {
                session.advance(SessionState::Restoring)?;
                self.store.update_session(&session).await?;
            }
            match restored {
                // The standby's restore, from this synthesis' start (its base pages were
                // loaded before): what the synthesis waited for.
                Outcome::Finished(result, _) if primed => {
                    result?;
                    timer.record("restore_standby", started);
                }
                Outcome::Finished(result, took) => {
                    result?;
                    // The restore's own wall time (it overlapped the decode), under a name
                    // of its own: the session's timings say which path ran.
                    timer.record_took("restore_stream", took);
                }
                _ if has_memory => {
                    self.give_vm_its_files(&base, &dir)?;
                    timer.time("restore", self.hv.restore(&memory)).await?;
                    let _ = std::fs::remove_file(&memory); // QEMU has loaded it
                }
                _ => {
                    self.give_vm_its_files(&base, &dir)?;
                    timer.time("boot", self.hv.start(&xml)).await?;
                }
            }
            session.vnc_port = self.hv.vnc_port(&vm).await.ok().flatten().map(i64::from);
            let started = StepTimer::begin("ports");
            for port in merge_ports(&base, &guest_ports) {
                let host = forward_port(&self.hv, &vm, self.config.effective_ports_address(), port)
                    .await?;
                session.host_ports.0.insert(port, host);
            }
            timer.record("ports", started);
            session.advance(SessionState::Running)?;
            Ok(())
        }
        .await
        .map_err(|e| match watch {
            Some(w) => w.explain(e),
            None => e,
        });
        // A standby not used (the synthesis failed before it looked) goes; its directory
        // is the failed session's, removed with it.
        if let Some(s) = standby.take() {
            self.discard_synthesis_standby(s, true).await;
        }
        if let Some(row) = standby_row {
            // Its VM is the session's now (or gone with it).
            if let Err(e) = self.store.delete_standby(&row.id).await {
                tracing::warn!(error = %e, "forgetting a taken synthesis standby");
            }
        }
        let ok = result.is_ok();
        let settled = self.settle_start(&mut session, &timer, result).await;
        self.metrics
            .synthesis_done(ok && settled.is_ok(), clock.elapsed(), &session.timings.0);
        if settled.is_err() {
            // No session of this base runs on: the next synthesis gets a standby.
            self.after_session(&session);
        }
        settled?;
        Ok(session)
    }
}

/// How a synthesis writes the save file it restores from.
enum Source {
    /// A stream opened once the disk exists.
    Open(cloudlet_engine::decode::OpenStream),
    /// A synthesis standby's stream, which holds the base's pages.
    Primed(Box<cloudlet_engine::decode::PrimedStream>),
}

/// Whether `url`'s origin is one of `allow` (`scheme://host[:port]`).
fn origin_allowed(allow: &[String], url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // host_str() keeps an IPv6 literal's brackets; origins are compared without them.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let origin = (
        url.scheme().to_string(),
        host.to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or(0),
    );
    allow
        .iter()
        .filter_map(|a| crate::config::parse_origin(a))
        .any(|a| a == origin)
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
