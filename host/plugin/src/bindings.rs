//! Host bindings for the `sluice:plugin` world.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    exports: { default: async },
    // Storing a message waits for the archive's fsync: off the async workers.
    imports: { "sluice:plugin/host.store-message": async },
    with: {
        "sluice:plugin/types.message": crate::message::MessageHandle,
        "sluice:plugin/host.data": crate::step::DataHandle,
    },
});

pub use exports::sluice::plugin::filter;
pub use sluice::plugin::host;
pub use sluice::plugin::types;
