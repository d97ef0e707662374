//! The audit chain against both backends: concurrent appends, verification, and tampering
//! done directly in the database the way someone with write access to it would.

mod it;
