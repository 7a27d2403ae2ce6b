//! Every SQL statement the server runs on the photographs. Their text lives in `sql/queries/`
//! (one file each, commented there), so the bench (`bench/run.sh`) runs exactly the statements
//! the server runs. Migrations are in [`super::migrate`]; the pool's liveness check (`SELECT 1`)
//! and the `LISTEN` connection's commands are in [`super`] and [`crate::read::notify`].
//!
//! Statements are sent with typed parameters (`query_typed`) where they run on every request:
//! one round trip, planned with the actual values.

use postgres::{error::SqlState, types::Type};

use super::{DbError, PgConn};
use crate::{
    blocking::Panicked,
    model::{PageKey, Photo},
};

macro_rules! statement {
    ($(#[$doc:meta])* $name:ident = $file:literal) => {
        $(#[$doc])*
        pub const $name: &str = include_str!(concat!("../../sql/queries/", $file));
    };
}

statement!(/// One listing page; see the file for its parameters.
    PAGE = "page.sql");
statement!(/// Several plain listing pages in one round trip.
    PAGES = "pages.sql");
statement!(/// `X-Total-Count`.
    COUNT = "count.sql");
statement!(/// One photograph by id.
    PHOTO = "photo.sql");
statement!(/// The table copy kept for outages.
    TABLE_COPY = "table_copy.sql");
statement!(/// `GET /api/categories`.
    CATEGORIES = "categories.sql");
statement!(/// The duplicate check before any image work.
    NAME_TAKEN = "name_taken.sql");
statement!(/// The write protocol's row.
    INSERT_PHOTO = "insert_photo.sql");
statement!(/// Clean-up's claim of a name, always rolled back.
    CLAIM_NAME = "claim_name.sql");
statement!(/// `PATCH /api/images/{id}`.
    SET_CATEGORY = "set_category.sql");
statement!(/// A delete's first step.
    LOCK_FOR_DELETE = "lock_for_delete.sql");
statement!(/// Whether another row shares an object URL.
    URL_SHARED = "url_shared.sql");
statement!(/// A delete's second step.
    DELETE_PHOTO = "delete_photo.sql");
statement!(/// The rows `variants backfill` works on.
    MISSING_VARIANTS = "missing_variants.sql");
statement!(/// A row locked for the rest of its transaction.
    LOCK_PHOTO = "lock_photo.sql");
statement!(/// What `variants backfill` or the background task made.
    SET_VARIANTS = "set_variants.sql");
statement!(/// The rows whose variants the background task has still to make.
    PENDING_VARIANTS = "pending_variants.sql");
statement!(/// `reconcile`'s view of the table.
    OBJECT_URLS = "object_urls.sql");

/// A transaction that waits on a same-name upload waits at most this long (then fails, and is
/// retried or reported) instead of forever.
pub const WAIT_FOR_LOCKS: &str = "SET LOCAL lock_timeout = '30s'";
/// Clean-up waits less: it runs again soon anyway.
pub const WAIT_FOR_LOCKS_BRIEFLY: &str = "SET LOCAL lock_timeout = '10s'";

/// The columns of a [`Photo`], in the order [`photo_from_row`] reads them: every statement
/// that returns photographs selects exactly these (a test checks each file).
pub const PHOTO_COLUMNS: &str =
    "id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color";

/// A [`Photo`] from a row selected as [`PHOTO_COLUMNS`].
pub fn photo_from_row(r: &postgres::Row) -> Photo {
    Photo {
        id: r.get(0),
        filename: r.get(1),
        url: r.get(2),
        category: r.get(3),
        width: r.get(4),
        height: r.get(5),
        thumbnail_url: r.get(6),
        medium_url: r.get(7),
        placeholder: r.get(8),
        color: r.get(9),
    }
}

/// One page of photographs in id order (see `sql/queries/page.sql`). Sent as an unnamed
/// statement with typed parameters: one round trip, and planned with the actual values, so the
/// optional filters still use the indexes.
pub fn fetch_page(c: &mut PgConn, key: &PageKey) -> Result<Vec<Photo>, DbError> {
    let category = key.category.as_ref().map(|c| c.as_str());
    let rows = c.query_typed(
        PAGE,
        &[
            (&key.limit, Type::INT8),
            (&key.offset, Type::INT8),
            (&key.after_id, Type::INT8),
            (&category, Type::TEXT),
        ],
    )?;
    Ok(rows.iter().map(photo_from_row).collect())
}

/// Plain pages (no keyset, no category) in one round trip (see `sql/queries/pages.sql`): the
/// rows of each, in the order of `pages`.
pub fn fetch_pages(c: &mut PgConn, pages: &[(i64, i64)]) -> Result<Vec<Vec<Photo>>, DbError> {
    let sql = pages_statement(pages.len());
    let mut params: Vec<(&(dyn postgres::types::ToSql + Sync), Type)> = Vec::new();
    for (limit, offset) in pages {
        params.push((limit, Type::INT8));
        params.push((offset, Type::INT8));
    }
    let rows = c.query_typed(&sql, &params)?;
    let mut out = vec![Vec::new(); pages.len()];
    for row in &rows {
        let n: i64 = row.get(PHOTO_COLUMNS.split(", ").count());
        let page = usize::try_from(n - 1)
            .ok()
            .and_then(|i| out.get_mut(i))
            // pages.sql numbers the pages 1..=len: anything else is a bug here.
            .ok_or_else(|| Panicked(format!("pages.sql answered page {n} of {}", pages.len())))?;
        page.push(photo_from_row(row));
    }
    Ok(out)
}

/// `pages.sql` for `count` pages: page n (from 1) has the parameters $2n-1 (limit) and $2n
/// (offset).
fn pages_statement(count: usize) -> String {
    let body = PAGES
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut sql = String::new();
    for n in 1..=count {
        if n > 1 {
            sql.push_str("\nUNION ALL\n");
        }
        sql.push_str(
            &body
                .replace("@n", &n.to_string())
                .replace("@limit", &format!("${}", 2 * n - 1))
                .replace("@offset", &format!("${}", 2 * n)),
        );
    }
    sql.push_str("\nORDER BY n, id");
    sql
}

/// Number of photographs, optionally of one lower-cased category (`X-Total-Count`).
pub fn count(c: &mut PgConn, category: Option<&str>) -> Result<i64, DbError> {
    let rows = c.query_typed(COUNT, &[(&category, Type::TEXT)])?;
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

/// The photograph with this id.
pub fn photo(c: &mut PgConn, id: i32) -> Result<Option<Photo>, DbError> {
    Ok(c.query_typed(PHOTO, &[(&id, Type::INT4)])?
        .first()
        .map(photo_from_row))
}

/// Whether a row claims the name.
pub fn name_taken(c: &mut PgConn, name: &str) -> Result<bool, DbError> {
    Ok(!c
        .query_typed(NAME_TAKEN, &[(&name, Type::TEXT)])?
        .is_empty())
}

/// The name's claim (migration 0002) is taken by another row.
pub fn is_name_taken(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error()
            .and_then(|d| d.constraint())
            .is_none_or(|c| c == "photograph_names_pkey")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_that_returns_photos_selects_the_columns_photo_from_row_reads() {
        for sql in [PAGE, PAGES, PHOTO, TABLE_COPY] {
            assert!(sql.contains(&format!("SELECT {PHOTO_COLUMNS}\n")), "{sql}");
        }
        assert!(SET_CATEGORY.contains(&format!("RETURNING {PHOTO_COLUMNS}\n")));
    }

    #[test]
    fn several_pages_are_one_union_with_each_pages_own_numbered_limit_and_offset() {
        let one = pages_statement(1);
        assert!(!one.contains("UNION ALL") && !one.contains("--"), "{one}");
        assert!(one.contains("1::int8 AS n") && one.contains("LIMIT $1 OFFSET $2)"));
        let three = pages_statement(3);
        assert_eq!(three.matches("UNION ALL").count(), 2);
        for (n, limit, offset) in [(1, 1, 2), (2, 3, 4), (3, 5, 6)] {
            assert!(three.contains(&format!("{n}::int8 AS n")), "{three}");
            assert!(
                three.contains(&format!("LIMIT ${limit} OFFSET ${offset})")),
                "{three}"
            );
        }
        assert!(three.ends_with("ORDER BY n, id") && !three.contains('@'));
    }
}
