"""settlement layer (see ../shared/DESIGN.md). So far its pure parts: ``fx`` (customer rates, quote
amounts, refunds, canonical quote bytes) and ``netting`` (multilateral nets, instructions, unwinding)."""
