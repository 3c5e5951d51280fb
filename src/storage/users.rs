//! The users table: in SQLite beside the callback ledger (its own connection), or in the
//! PostgreSQL database several nodes share, so a user added once logs in on every node.

use super::pg::PgConn;
use crate::web::auth::{Role, User, UserError, UserStore};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use std::path::Path;

pub struct SqliteUsers {
    conn: Connection,
}

fn db(e: rusqlite::Error) -> UserError {
    UserError::Storage(e.to_string())
}

const COLUMNS: &str = "name, role, password_hash, sip_realm, sip_ha1, created_at";

/// An unknown role (a newer version wrote it) gets the least rights.
fn read_role(role: &str) -> Role {
    Role::parse(role).unwrap_or(Role::Agent)
}

fn user_from(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(1)?;
    Ok(User {
        name: row.get(0)?,
        role: read_role(&role),
        password_hash: row.get(2)?,
        sip_realm: row.get(3)?,
        sip_ha1: row.get(4)?,
        created_at: row.get(5)?,
    })
}

impl SqliteUsers {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, UserError> {
        let conn = Connection::open(path).map_err(db)?;
        Ok(Self {
            conn: super::sqlite::prepare(conn).map_err(db)?,
        })
    }

    pub fn in_memory() -> Result<Self, UserError> {
        let conn = Connection::open_in_memory().map_err(db)?;
        Ok(Self {
            conn: super::sqlite::prepare(conn).map_err(db)?,
        })
    }
}

impl UserStore for SqliteUsers {
    fn add(&mut self, user: &User) -> Result<(), UserError> {
        let r = self.conn.execute(
            &format!("INSERT INTO users ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                user.name,
                user.role.as_str(),
                user.password_hash,
                user.sip_realm,
                user.sip_ha1,
                user.created_at
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(UserError::Exists(user.name.clone()))
            }
            Err(e) => Err(db(e)),
        }
    }

    fn get(&mut self, name: &str) -> Result<Option<User>, UserError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE name = ?1"),
                [name],
                user_from,
            )
            .optional()
            .map_err(db)
    }

    fn list(&mut self) -> Result<Vec<User>, UserError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))
            .map_err(db)?;
        let rows = stmt
            .query_map([], user_from)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    fn remove(&mut self, name: &str) -> Result<(), UserError> {
        match self
            .conn
            .execute("DELETE FROM users WHERE name = ?1", [name])
            .map_err(db)?
        {
            0 => Err(UserError::NotFound(name.into())),
            _ => Ok(()),
        }
    }
}

/// Users in PostgreSQL: the same table, shared by every node on the store.
pub struct PostgresUsers {
    conn: PgConn,
}

/// The users' migrations, counted as component `users` in `humanline_schema`.
const PG_MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT   NOT NULL UNIQUE,
    role          TEXT   NOT NULL,
    password_hash TEXT   NOT NULL,
    sip_realm     TEXT   NOT NULL,
    sip_ha1       TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);
"#];

fn pg(e: ::postgres::Error) -> UserError {
    UserError::Storage(super::pg::db(e))
}

fn pg_user(row: &::postgres::Row) -> Result<User, UserError> {
    let role: String = row.try_get(1).map_err(pg)?;
    Ok(User {
        name: row.try_get(0).map_err(pg)?,
        role: read_role(&role),
        password_hash: row.try_get(2).map_err(pg)?,
        sip_realm: row.try_get(3).map_err(pg)?,
        sip_ha1: row.try_get(4).map_err(pg)?,
        created_at: row.try_get(5).map_err(pg)?,
    })
}

impl PostgresUsers {
    /// Connects and brings the users' table up to date.
    pub fn connect(url: &str) -> Result<Self, UserError> {
        let mut conn = PgConn::connect(url).map_err(UserError::Storage)?;
        conn.migrate("users", PG_MIGRATIONS)
            .map_err(UserError::Storage)?;
        Ok(Self { conn })
    }

    fn client(&mut self) -> Result<&mut ::postgres::Client, UserError> {
        self.conn.client().map_err(UserError::Storage)
    }
}

impl UserStore for PostgresUsers {
    fn add(&mut self, user: &User) -> Result<(), UserError> {
        let added = self
            .client()?
            .execute(
                &format!(
                    "INSERT INTO users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (name) DO NOTHING"
                ),
                &[
                    &user.name,
                    &user.role.as_str(),
                    &user.password_hash,
                    &user.sip_realm,
                    &user.sip_ha1,
                    &user.created_at,
                ],
            )
            .map_err(pg)?;
        match added {
            0 => Err(UserError::Exists(user.name.clone())),
            _ => Ok(()),
        }
    }

    fn get(&mut self, name: &str) -> Result<Option<User>, UserError> {
        self.client()?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM users WHERE name = $1"),
                &[&name],
            )
            .map_err(pg)?
            .as_ref()
            .map(pg_user)
            .transpose()
    }

    fn list(&mut self) -> Result<Vec<User>, UserError> {
        self.client()?
            .query(
                &format!("SELECT {COLUMNS} FROM users ORDER BY name COLLATE \"C\""),
                &[],
            )
            .map_err(pg)?
            .iter()
            .map(pg_user)
            .collect()
    }

    fn remove(&mut self, name: &str) -> Result<(), UserError> {
        match self
            .client()?
            .execute("DELETE FROM users WHERE name = $1", &[&name])
            .map_err(pg)?
        {
            0 => Err(UserError::NotFound(name.into())),
            _ => Ok(()),
        }
    }
}

// Both stores' users are tested in tests/ledger_stores.rs; here what only SQLite has.
#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, role: Role) -> User {
        User {
            name: name.into(),
            role,
            password_hash: "$argon2id$x".into(),
            sip_realm: "humanline".into(),
            sip_ha1: "0".repeat(32),
            created_at: 7,
        }
    }

    /// A ledger from before users existed opens with its promises and an empty users table.
    #[test]
    fn an_old_ledger_gains_a_users_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callbacks.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(super::super::sqlite::MIGRATIONS[0])
                .unwrap();
            conn.execute_batch(super::super::sqlite::MIGRATIONS[1])
                .unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
        }
        let mut u = SqliteUsers::open(&path).unwrap();
        assert!(u.list().unwrap().is_empty());
        u.add(&user("carol", Role::Supervisor)).unwrap();
        // The ledger opens beside it.
        let mut ledger = crate::callbacks::CallbackLedger::new(
            super::super::SqliteStore::open(&path).unwrap(),
            crate::callbacks::RetryPolicy::default(),
        );
        assert!(ledger.list(None).unwrap().is_empty());
    }
}
