"""Makes source databases for `strata import` tests with the real libraries.

    python import_fixtures.py fastapi-users PATH.db   # fastapi-users' UserManager, SQLite
    python import_fixtures.py django PATH.db          # Django's create_user, SQLite

Prints one JSON object: what was made, for the test to check against.
"""

import asyncio
import json
import sqlite3
import sys


def fastapi_users(path):
    import uuid

    from fastapi_users import BaseUserManager, UUIDIDMixin, schemas
    from fastapi_users.password import PasswordHelper
    from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
    from pwdlib import PasswordHash
    from pwdlib.hashers.bcrypt import BcryptHasher
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class User(SQLAlchemyBaseUserTableUUID, Base):
        pass

    class Manager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
        reset_password_token_secret = verification_token_secret = "fixture"

    async def run():
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        made = {}
        async with async_sessionmaker(engine)() as session:
            db = SQLAlchemyUserDatabase(session, User)
            default = Manager(db)  # pwdlib: argon2id, bcrypt for verifying only
            bcrypt = Manager(db, PasswordHelper(PasswordHash((BcryptHasher(),))))
            for manager, email, password, superuser, active in [
                (default, "ann@example.com", "ann's fastapi password", True, True),
                (bcrypt, "bob@example.com", "bob's bcrypt password", False, True),
                (default, "cat@example.com", "cat's password", False, False),
                (default, "dan@example.com", "dan's password", False, True),
                (default, "eve@example.com", "eve's password", False, True),
            ]:
                user = await manager.create(
                    schemas.BaseUserCreate(email=email, password=password, is_superuser=superuser, is_active=active)
                )
                made[email] = {"id": str(user.id), "hash": user.hashed_password}
        await engine.dispose()
        # What fastapi-users itself never writes but real tables hold: a hash from an
        # older system, and an address its validator would refuse today.
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE user SET hashed_password = 'md5$x$0123456789abcdef' WHERE email = 'dan@example.com'")
            conn.execute("UPDATE user SET email = 'eve at example.com' WHERE email = 'eve@example.com'")
        return made

    return asyncio.run(run())


def django(path):
    import django as dj
    from django.conf import settings

    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
    )
    dj.setup()
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    made = {}
    ann = User.objects.create_user("ann", "ann@example.com", "ann's django password", first_name="Ann", last_name="Lee")
    made["ann"] = {"id": ann.id, "hash": ann.password}
    root = User.objects.create_superuser("root", "root@example.com", "root's django password")
    made["root"] = {"id": root.id, "hash": root.password}
    carl = User.objects.create_user("carl", "carl@example.com")
    carl.password = make_password("carl's argon2 password", hasher="argon2")
    carl.save()
    made["carl"] = {"id": carl.id, "hash": carl.password}
    gone = User.objects.create_user("gone", "gone@example.com", "whatever", is_active=False)
    made["gone"] = {"id": gone.id, "hash": gone.password}
    # No usable password ('!…'): imported, but disabled.
    nopw = User.objects.create_user("nopw", "nopw@example.com")
    made["nopw"] = {"id": nopw.id, "hash": nopw.password}
    # Django allows both of these; Strata does not.
    noemail = User.objects.create_user("noemail", "", "whatever")
    made["noemail"] = {"id": noemail.id, "hash": noemail.password}
    twin = User.objects.create_user("twin", "ANN@example.com", "whatever")
    made["twin"] = {"id": twin.id, "hash": twin.password}
    return made


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    print(json.dumps({"fastapi-users": fastapi_users, "django": django}[kind](path)))
