"""Operations tooling that runs beside the product, never inside it: disaster recovery
(``ops.dr``). Nothing of the product imports it, and it imports nothing of the product:
it must work on a host where only PostgreSQL's tools and this checkout are present."""
