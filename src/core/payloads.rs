//! Messages that carry a datablock's data (upload SET, UPDATE) and the
//! CHUNK messages of chunked ones: reassembly, checks, and errors that name
//! the datablock and transfer they concern.

use std::sync::Arc;

use bytes::Bytes;

use super::transfers::Pending;
use super::{Core, protocol_error};
use crate::protocol::{
    Channel, ChunkFields, ErrorCode, PayloadSpec, ProtocolError, RefersTo, ServerMessage,
    UploadStep, Wire, validate_value,
};
use crate::room::{ClientId, Delivery, Effects, RoomError};

impl Pending {
    /// What an ERROR about this payload refers to.
    pub(super) fn refers_to(&self, transfer: Option<u64>) -> RefersTo {
        let (kind, id) = self.kind_and_id();
        RefersTo {
            kind: Some(kind.to_owned()),
            id,
            uuid: Some(self.uuid().to_owned()),
            transfer,
        }
    }

    /// The message that announced the payload, and its request id.
    fn kind_and_id(&self) -> (&'static str, Option<u64>) {
        match self {
            Pending::UploadSet { req_id, .. } => ("SERVER_SNAPSHOT", *req_id),
            Pending::Update { req_id, .. } => ("UPDATE", *req_id),
        }
    }
}

impl Core {
    /// A header announcing a datablock's data: inline data completes now;
    /// a chunked transfer is checked against what the room would accept and
    /// then waits for its chunks.
    pub(super) async fn datablock_message(
        &mut self,
        id: ClientId,
        channel: Channel,
        pending: Pending,
        chunk: &ChunkFields,
        payload: Option<Bytes>,
    ) {
        let spec = match chunk.spec() {
            Ok(spec) => spec,
            Err(e) => {
                let refers_to = pending.refers_to(chunk.transfer);
                return self.error_to_client(id, &invalid(e), refers_to).await;
            }
        };
        // The refusal's context is built before `pending` moves, and only
        // off the path every inline update takes.
        let (refers_to, started) = match (spec, payload) {
            (PayloadSpec::Inline, Some(data)) => {
                return self.finish(id, pending, data, None).await;
            }
            (PayloadSpec::Inline, None) => (
                pending.refers_to(chunk.transfer),
                Err(protocol_error(
                    ErrorCode::InvalidMessage,
                    "the data frame is missing (or announce a chunked transfer)",
                )),
            ),
            (PayloadSpec::Chunked { .. }, Some(_)) => (
                pending.refers_to(chunk.transfer),
                Err(protocol_error(
                    ErrorCode::InvalidMessage,
                    "a chunked transfer's header must not carry a data frame",
                )),
            ),
            (
                PayloadSpec::Chunked {
                    transfer,
                    chunks,
                    size,
                },
                None,
            ) => (
                pending.refers_to(chunk.transfer),
                self.begin_transfer(id, channel, transfer, chunks, size, pending),
            ),
        };
        if let Err(e) = started {
            self.error_to_client(id, &e, refers_to).await;
        }
    }

    fn begin_transfer(
        &mut self,
        id: ClientId,
        channel: Channel,
        transfer: u64,
        chunks: u32,
        size: u64,
        pending: Pending,
    ) -> Result<(), RoomError> {
        // Refuse now rather than after receiving all the data.
        let (_, room) = self.room_mut(id)?;
        match &pending {
            Pending::UploadSet { .. } => room.can_upload(id)?,
            Pending::Update {
                spec,
                patch,
                base_revision,
                ..
            } => room.can_update(id, &spec.uuid, *patch, *base_revision)?,
        }
        let limits = &self.config.limits;
        let held: u64 = self.sessions.values().map(|s| s.transfers.reserved()).sum();
        // A payload over the datablock limit is refused as too large below.
        if size <= limits.max_datablock_bytes as u64
            && held + size > limits.max_transfer_bytes_total as u64
        {
            return Err(protocol_error(
                ErrorCode::LimitExceeded,
                format!(
                    "the server is holding {held} bytes of unfinished transfers, the most it takes \
                     is {}; retry when uploads in progress have finished",
                    limits.max_transfer_bytes_total
                ),
            ));
        }
        let session = self.sessions.get_mut(&id).ok_or_else(not_connected)?;
        session
            .transfers
            .begin(channel, transfer, chunks, size, pending, limits)
    }

    /// A CHUNK; the last one completes its transfer.
    pub(super) async fn chunk_message(
        &mut self,
        id: ClientId,
        channel: Channel,
        transfer: u64,
        index: u32,
        payload: Option<&[u8]>,
    ) {
        let refers_to = RefersTo {
            kind: Some("CHUNK".to_owned()),
            transfer: Some(transfer),
            ..RefersTo::default()
        };
        let Some(data) = payload else {
            let e = protocol_error(ErrorCode::InvalidMessage, "CHUNK needs a data frame");
            return self.error_to_client(id, &e, refers_to).await;
        };
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        match session.transfers.chunk(channel, transfer, index, data) {
            Ok(None) => {}
            Ok(Some((pending, data))) => self.finish(id, pending, data, Some(transfer)).await,
            Err(refused) => {
                let refers_to = match &refused.data_of {
                    Some(pending) => pending.refers_to(Some(transfer)),
                    None => refers_to,
                };
                self.error_to_client(id, &refused.error, refers_to).await;
            }
        }
    }

    /// Hands complete data to the room and reports a refusal.
    async fn finish(&mut self, id: ClientId, pending: Pending, data: Bytes, transfer: Option<u64>) {
        let (kind, req_id) = pending.kind_and_id();
        // The one copy of the uuid an update needs: for the acknowledgement,
        // or for the refusal's context.
        let uuid = pending.uuid().to_owned();
        let update = matches!(pending, Pending::Update { .. });
        // A chunked payload was checked chunk by chunk as it arrived.
        let checked = transfer.is_some();
        match self.complete(id, pending, data, &uuid, checked) {
            Ok((room, effects)) => {
                if update {
                    self.metrics.updates.inc();
                }
                self.apply(&room, effects).await;
            }
            Err(e) => {
                let refers_to = RefersTo {
                    kind: Some(kind.to_owned()),
                    id: req_id,
                    uuid: Some(uuid),
                    transfer,
                };
                self.error_to_client(id, &e, refers_to).await;
            }
        }
    }

    fn complete(
        &mut self,
        id: ClientId,
        pending: Pending,
        data: Bytes,
        uuid: &str,
        checked: bool,
    ) -> Result<(Arc<str>, Effects), RoomError> {
        let max = self.config.limits.max_datablock_bytes;
        if data.len() > max {
            return Err(protocol_error(
                ErrorCode::TooLarge,
                format!(
                    "payload of {} bytes exceeds the datablock limit of {max} bytes",
                    data.len()
                ),
            ));
        }
        let exists = self.room_mut(id)?.1.repository().contains(uuid);
        self.check_server_totals(!exists, data.len())?;
        let (room_name, room) = self.room_mut(id)?;
        let effects = match pending {
            Pending::UploadSet { req_id, spec } => {
                if !checked {
                    validate_value(&data).map_err(|e| bad_data(&spec.uuid, &e))?;
                }
                room.upload(id, UploadStep::Set, req_id, Some((spec, data)))?
            }
            Pending::Update {
                req_id,
                spec,
                patch,
                base_revision,
            } => {
                if !patch && !checked {
                    validate_value(&data).map_err(|e| bad_data(&spec.uuid, &e))?;
                }
                let mut effects = room.update(id, spec, patch, base_revision, data)?;
                if let Some(ack_id) = req_id {
                    let revision = room.repository().get(uuid).map_or(0, |b| b.revision);
                    let ack = ServerMessage::Ack {
                        id: ack_id,
                        uuid: uuid.to_owned(),
                        revision,
                    };
                    effects.deliveries.push(Delivery {
                        to: vec![id],
                        channel: Channel::Commands,
                        wire: Wire::message(&ack),
                    });
                }
                effects
            }
        };
        Ok((room_name, effects))
    }

    /// Sends an ERROR to an authenticated client.
    pub(super) async fn error_to_client(
        &mut self,
        id: ClientId,
        error: &RoomError,
        refers_to: RefersTo,
    ) {
        if let Some(identity) = self.sessions.get(&id).map(|s| s.identity.clone()) {
            self.error_to(&identity, error, refers_to).await;
        }
    }
}

pub(super) fn invalid(e: ProtocolError) -> RoomError {
    protocol_error(e.code(), e.to_string())
}

fn bad_data(uuid: &str, e: &ProtocolError) -> RoomError {
    protocol_error(
        ErrorCode::Malformed,
        format!("the data of datablock {uuid} is not one MessagePack value: {e}"),
    )
}

fn not_connected() -> RoomError {
    protocol_error(ErrorCode::NotAuthenticated, "this client is not connected")
}
