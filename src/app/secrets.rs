//! Sealing secrets where the use cases take them in (SPEC 7.4): a new or
//! changed task's `{"secret": "..."}` inputs, and a result's secret
//! outputs, before anything keeps them. From here on bora holds them only
//! sealed; the relay opens them for the worker's message. Tasks without
//! secrets pass through without a walk or an allocation.

use serde_json::{Map, Value};

use super::AppError;
use crate::domain::OutputSpec;
use crate::domain::secret::{client_secret, has_client_secrets, sealed, sealed_input};
use crate::protocol::TaskResult;
use crate::seal::{SealError, Sealer};
use crate::store::StoreError;

fn seal_failed(e: SealError) -> AppError {
    AppError::Store(StoreError::Corrupt(e.to_string()))
}

/// Seals every client secret among `inputs` in place:
/// `{"secret": "pw"}` becomes `{"secret": {"$sealed": TOKEN}}`.
///
/// # Errors
/// A value the AEAD refuses (longer than it allows).
pub(super) fn seal_inputs(
    sealer: &Sealer,
    inputs: &mut Map<String, Value>,
) -> Result<(), AppError> {
    if !has_client_secrets(inputs) {
        return Ok(());
    }
    for value in inputs.values_mut() {
        if let Some(plain) = client_secret(value) {
            let token = sealer
                .seal(&Value::String(plain.to_owned()))
                .map_err(seal_failed)?;
            *value = sealed_input(token);
        }
    }
    Ok(())
}

/// Seals the values of `result`'s outputs that `declared` says are
/// secret. An absent output, a null and an empty string stay as they are:
/// the release reads them as missing, and Heat's `error_output` rule as
/// empty (a sealed value reads as non-empty).
///
/// # Errors
/// A value the AEAD refuses.
pub(super) fn seal_outputs(
    sealer: &Sealer,
    result: &mut TaskResult,
    declared: &[OutputSpec],
) -> Result<(), AppError> {
    for o in declared.iter().filter(|o| o.secret) {
        if let Some(v) = result.outputs.get_mut(&o.name)
            && !v.is_null()
            && v.as_str() != Some("")
        {
            *v = sealed(sealer.seal(v).map_err(seal_failed)?);
        }
    }
    Ok(())
}
