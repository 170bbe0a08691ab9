//! Transports: each file adapts one kind of connection to the session contract
//! ([`FrameReader`](crate::session::FrameReader), [`FrameWriter`](crate::session::FrameWriter)):
//! accepting, framing and close codes. No room logic lives here.

pub(crate) mod websocket;
pub(crate) mod webtransport;
