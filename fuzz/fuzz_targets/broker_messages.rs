//! The storage broker's messages from clients: protobuf
//! `SafekeeperTimelineInfo` (published by safekeepers) and
//! `SubscribeSafekeeperInfoRequest` (from pageservers), decoded and
//! validated as the broker and its clients do (`storage_broker/src/info.rs`).
//!
//! Input: `[kind]` (bit 0: subscribe request), then the protobuf message.

#![no_main]

use fuzz::broker_info::SafekeeperTimelineInfo;
use fuzz::proto;
use fuzz::proto::subscribe_safekeeper_info_request::SubscriptionKey;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    if kind & 1 == 0 {
        let Ok(info) = proto::SafekeeperTimelineInfo::decode(message) else {
            return;
        };
        let again = proto::SafekeeperTimelineInfo::decode(info.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&info));
        if let Ok(valid) = SafekeeperTimelineInfo::try_from(info.clone()) {
            let back = proto::SafekeeperTimelineInfo::from(valid.clone());
            assert_eq!(SafekeeperTimelineInfo::try_from(back), Ok(valid));
        }
    } else {
        let Ok(request) = proto::SubscribeSafekeeperInfoRequest::decode(message) else {
            return;
        };
        if let Some(SubscriptionKey::TenantTimelineId(id)) = &request.subscription_key {
            if let Ok((tenant, timeline)) = id.ids() {
                assert_eq!(proto::TenantTimelineId::new(tenant, timeline), *id);
            }
        }
    }
});
