import Testing

@testable import ChatStorePostgres

/// A migration is split into statements at each `;` outside dollar-quoted bodies, so a procedure's body stays whole.
@Suite struct PostgresSchemaTests {
    @Test func migrationsSplitAtSemicolonsOutsideDollarQuotes() {
        let text = """
            ALTER TABLE a ADD COLUMN b int;
            CREATE PROCEDURE p(x int) LANGUAGE plpgsql AS $body$ BEGIN UPDATE a SET b = x; COMMIT; END $body$;
            SELECT '$1'; SELECT $1::int
            """
        let parts = PostgresSchema.statements(of: text).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(parts == [
            "ALTER TABLE a ADD COLUMN b int",
            "CREATE PROCEDURE p(x int) LANGUAGE plpgsql AS $body$ BEGIN UPDATE a SET b = x; COMMIT; END $body$",
            "SELECT '$1'", "SELECT $1::int",
        ])
        #expect(PostgresSchema.statements(of: PostgresSchema.migrations[8]).count == 2, "version 9: two procedures")
    }
}
