//! The registry of existing accounts that users may reference.

use sqlx::Any;

use super::{QueryContext, Store, StoreError, now};
use crate::domain::{Account, KnownAccounts};

impl Store {
    /// Registers accounts; returns how many were new. Registering an account twice is not an error.
    pub async fn add_accounts(&self, accounts: &[Account]) -> Result<usize, StoreError> {
        let mut tx = self.pool().begin().await.context("starting a transaction")?;
        let mut added = 0;
        for account in accounts {
            let result = sqlx::query::<Any>(
                "INSERT INTO accounts (account, created_at) VALUES ($1, $2) ON CONFLICT (account) DO NOTHING",
            )
            .bind(account.to_string())
            .bind(now())
            .execute(&mut *tx)
            .await
            .context("registering an account")?;
            added += result.rows_affected() as usize;
        }
        self.count_write(accounts.len() as u64);
        tx.commit().await.context("committing registered accounts")?;
        Ok(added)
    }

    /// Unregisters an account; returns whether it was registered. Users already in organizations stay.
    pub async fn remove_account(&self, account: &Account) -> Result<bool, StoreError> {
        self.count_write(1);
        let result = sqlx::query::<Any>("DELETE FROM accounts WHERE account = $1")
            .bind(account.to_string())
            .execute(self.pool())
            .await
            .context("unregistering an account")?;
        Ok(result.rows_affected() > 0)
    }

    /// Every registered account, sorted.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.count(1);
        let rows: Vec<String> = sqlx::query_scalar::<Any, String>("SELECT account FROM accounts ORDER BY account")
            .fetch_all(self.pool())
            .await
            .context("listing accounts")?;
        rows.into_iter()
            .map(|text| {
                text.parse()
                    .map_err(|e| StoreError::Corrupt(format!("account {text:?}: {e}")))
            })
            .collect()
    }

    pub async fn known_accounts(&self) -> Result<KnownAccounts, StoreError> {
        Ok(self.list_accounts().await?.into_iter().collect())
    }
}
