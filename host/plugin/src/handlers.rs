//! Calling a plugin's handlers without the generated bindings' per-instance work.
//!
//! The bindings look up and type-check all ten exports of `filter` every time an instance
//! is created, and a fresh instance calls one of them per message. [`Handlers`] resolves the
//! export indices once per component and type-checks every handler once (at load, on the
//! instance `configure` runs in); each call then fetches only the function it needs.

use crate::bindings::types as wit;
use crate::message::MessageHandle;
use crate::runtime::CONTRACT;
use crate::step::StepState;
use wasmtime::Store;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, Instance, Lift, Lower, Resource, TypedFunc,
};

type Msg = Resource<MessageHandle>;

/// Export indices of the `filter` handlers of one component.
#[derive(Debug, Clone, Copy)]
pub struct Handlers {
    connect: ComponentExportIndex,
    ehlo: ComponentExportIndex,
    mail: ComponentExportIndex,
    rcpt: ComponentExportIndex,
    data: ComponentExportIndex,
    queued: ComponentExportIndex,
    delivery: ComponentExportIndex,
    render: ComponentExportIndex,
    event: ComponentExportIndex,
}

impl Handlers {
    /// Finds the handlers' export indices.
    pub fn new(component: &Component) -> Result<Handlers, String> {
        let interface = format!(
            "sluice:plugin/filter@{}",
            CONTRACT.trim_start_matches("sluice:plugin@")
        );
        let filter = component
            .get_export_index(None, interface.as_str())
            .ok_or_else(|| format!("no `{interface}` export"))?;
        let get = |name: &str| {
            component
                .get_export_index(Some(&filter), name)
                .ok_or_else(|| format!("no `{name}` in `{interface}`"))
        };
        Ok(Handlers {
            connect: get("on-connect")?,
            ehlo: get("on-ehlo")?,
            mail: get("on-mail")?,
            rcpt: get("on-rcpt")?,
            data: get("on-data")?,
            queued: get("on-queued")?,
            delivery: get("on-delivery")?,
            render: get("on-render")?,
            event: get("on-event")?,
        })
    }

    /// Type-checks every handler against the signatures [`Handlers`] calls them with. Run
    /// once per component; every instance of a component has the same types.
    pub fn check(&self, store: &mut Store<StepState>, instance: &Instance) -> wasmtime::Result<()> {
        type O = (wit::Outcome,);
        instance.get_typed_func::<(&wit::SessionInfo,), O>(&mut *store, self.connect)?;
        instance.get_typed_func::<(&wit::SessionInfo,), O>(&mut *store, self.ehlo)?;
        instance
            .get_typed_func::<(&wit::SessionInfo, &wit::Envelope), O>(&mut *store, self.mail)?;
        instance.get_typed_func::<(&wit::SessionInfo, &wit::Envelope, &str), O>(
            &mut *store,
            self.rcpt,
        )?;
        instance.get_typed_func::<(Msg,), O>(&mut *store, self.data)?;
        instance.get_typed_func::<(Msg,), O>(&mut *store, self.queued)?;
        instance.get_typed_func::<(Msg, &[String]), O>(&mut *store, self.delivery)?;
        instance.get_typed_func::<(Msg, &str), (Vec<wit::Edit>,)>(&mut *store, self.render)?;
        instance.get_typed_func::<(&wit::Event,), O>(&mut *store, self.event)?;
        Ok(())
    }

    pub async fn on_connect(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        session: &wit::SessionInfo,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(&wit::SessionInfo,), (wit::Outcome,)>(s, i, self.connect, (session,)).await
    }

    pub async fn on_ehlo(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        session: &wit::SessionInfo,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(&wit::SessionInfo,), (wit::Outcome,)>(s, i, self.ehlo, (session,)).await
    }

    pub async fn on_mail(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        session: &wit::SessionInfo,
        envelope: &wit::Envelope,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(&wit::SessionInfo, &wit::Envelope), (wit::Outcome,)>(
            s,
            i,
            self.mail,
            (session, envelope),
        )
        .await
    }

    pub async fn on_rcpt(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        session: &wit::SessionInfo,
        envelope: &wit::Envelope,
        rcpt: &str,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(&wit::SessionInfo, &wit::Envelope, &str), (wit::Outcome,)>(
            s,
            i,
            self.rcpt,
            (session, envelope, rcpt),
        )
        .await
    }

    pub async fn on_data(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        m: Msg,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(Msg,), (wit::Outcome,)>(s, i, self.data, (m,)).await
    }

    pub async fn on_queued(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        m: Msg,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(Msg,), (wit::Outcome,)>(s, i, self.queued, (m,)).await
    }

    pub async fn on_delivery(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        m: Msg,
        rcpts: &[String],
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(Msg, &[String]), (wit::Outcome,)>(s, i, self.delivery, (m, rcpts)).await
    }

    pub async fn on_render(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        m: Msg,
        rcpt: &str,
    ) -> wasmtime::Result<Vec<wit::Edit>> {
        call::<(Msg, &str), (Vec<wit::Edit>,)>(s, i, self.render, (m, rcpt)).await
    }

    pub async fn on_event(
        &self,
        s: &mut Store<StepState>,
        i: &Instance,
        e: &wit::Event,
    ) -> wasmtime::Result<wit::Outcome> {
        call::<(&wit::Event,), (wit::Outcome,)>(s, i, self.event, (e,)).await
    }
}

/// Calls one handler and returns its single result.
async fn call<P, R>(
    store: &mut Store<StepState>,
    instance: &Instance,
    index: ComponentExportIndex,
    params: P,
) -> wasmtime::Result<<R as Single>::Out>
where
    P: ComponentNamedList + Lower + Send + Sync,
    R: ComponentNamedList + Lift + Send + Sync + Single + 'static,
{
    let func = instance
        .get_func(&mut *store, index)
        .ok_or_else(|| wasmtime::Error::msg("handler export missing"))?;
    // SAFETY: `Handlers::check` type-checked this export against exactly these parameter
    // and result types when the component was loaded (policy.rs calls it on the instance
    // `configure` runs in, before any step is used), and every instance of a component has
    // the same types.
    #[allow(unsafe_code)]
    let typed = unsafe { TypedFunc::<P, R>::new_unchecked(func) };
    let r = typed.call_async(&mut *store, params).await?;
    Ok(r.into_single())
}

/// A one-element result tuple.
pub trait Single {
    type Out;
    fn into_single(self) -> Self::Out;
}

impl<T> Single for (T,) {
    type Out = T;
    fn into_single(self) -> T {
        self.0
    }
}
