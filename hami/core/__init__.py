"""Pure domain core: requests, codecs, ledger, fit and scoring. No I/O, no asyncio."""
