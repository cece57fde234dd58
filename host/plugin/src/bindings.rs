//! Host bindings for the `sluice:plugin` world.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    exports: { default: async },
    with: {
        "sluice:plugin/types.message": crate::message::MessageHandle,
        "sluice:plugin/host.data": crate::step::DataHandle,
    },
});

pub use exports::sluice::plugin::filter;
pub use sluice::plugin::host;
pub use sluice::plugin::types;
