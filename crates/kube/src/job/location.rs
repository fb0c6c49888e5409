//! What a job does before backing up into a location that may not hold a repository yet:
//! Velero's first backup of a namespace creates that namespace's repository.

use super::engine::{Engine, EngineError, LocationContent, RepositoryAccess};

/// Makes sure `access.location` holds a cairn repository, creating one with the password
/// when the location is empty. A kopia repository, or objects that belong to neither, are
/// refused with what to do.
///
/// Two jobs may find the location empty at once; the one whose init finds the header
/// already written (`cairn.repository`) lost the race and uses the winner's repository.
pub fn ensure_repository(
    engine: &dyn Engine,
    access: &RepositoryAccess,
) -> Result<(), EngineError> {
    match engine.inspect_location(access)? {
        LocationContent::Cairn => Ok(()),
        LocationContent::Empty => {
            tracing::info!(location = %access.location, "no repository yet: creating it");
            match engine.init_repository(access, None) {
                Ok(()) => Ok(()),
                Err(init) => match engine.inspect_location(access) {
                    Ok(LocationContent::Cairn) => {
                        tracing::info!(
                            location = %access.location,
                            "another job created the repository first: using it"
                        );
                        Ok(())
                    }
                    _ => Err(init),
                },
            }
        }
        LocationContent::Kopia => Err(EngineError {
            message: format!(
                "{} holds a kopia repository (kopia.repository), not a cairn one: it was made \
                 by Velero's own data mover or by kopia; cairn will not write into it. Give \
                 cairn its own location (the BackupStorageLocation's config.cairnLocation, or \
                 another prefix)",
                access.location
            ),
            retryable: false,
        }),
        LocationContent::Unknown(first) => Err(EngineError {
            message: format!(
                "{} holds {first:?}, which is neither a cairn nor a kopia repository; cairn \
                 will not create a repository over it: empty that folder or point the \
                 location elsewhere",
                access.location
            ),
            retryable: false,
        }),
    }
}

/// Forgets snapshot `id` (`cairn job forget --snapshot ID`, for a deleted Velero backup).
/// A location without a repository, or a repository without that snapshot, means it is
/// already gone: that is success. Returns a one-line summary.
pub fn forget_one(
    engine: &dyn Engine,
    access: &RepositoryAccess,
    id: &str,
) -> Result<String, EngineError> {
    if engine.inspect_location(access)? == LocationContent::Empty {
        return Ok(format!(
            "no repository at {}: snapshot {id} is already gone",
            access.location
        ));
    }
    Ok(if engine.forget_snapshot(access, id)? {
        format!("forgot snapshot {id}; maintenance reclaims its data")
    } else {
        format!("snapshot {id} is not in the repository: already gone")
    })
}
