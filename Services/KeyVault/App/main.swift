import Foundation
import KeyVaultService
import VeilService

// key-vault: custody of kT, k2, the record key and the archive key; tokenizes inquiries
// and files upstream records. `key-vault rotate-match-key` rotates k2 in place.
if let status = await KeyVault.command(Array(CommandLine.arguments.dropFirst())) { exit(status) }
await KeyVault.runtime.main()
