-- Minimal init for the headless test (tests/test_editors_nvim.py) and for trying the plugin by hand:
--
--   INTARSIA_NVIM_TEST='{"cmd": ["intarsia", "serve"], "settings": {"engine": "test"}}' \
--     nvim --clean -u editors/nvim/test/minimal_init.lua some.py
--
-- INTARSIA_NVIM_TEST (JSON): cmd, settings (the server's), cursor_notify_ms, result_file and run (a Lua file
-- run after VimEnter: the test script). Without it: `intarsia serve` with the test engine and an empty table.
local here = vim.fs.dirname(vim.fs.normalize(debug.getinfo(1, 'S').source:sub(2)))
local root = vim.fs.dirname(here) -- editors/nvim
vim.opt.runtimepath:prepend(root)
vim.opt.swapfile = false
vim.opt.shadafile = 'NONE'

local raw = os.getenv('INTARSIA_NVIM_TEST')
local cfg = raw and raw ~= '' and vim.json.decode(raw) or {}
_G.intarsia_test_config = cfg

require('intarsia').setup({
  cmd = cfg.cmd or { 'intarsia', 'serve' },
  settings = cfg.settings or { engine = 'test' },
  debounce_ms = cfg.debounce_ms or 30,
  native = cfg.native == nil and 'auto' or cfg.native,
  cursor_notify_ms = cfg.cursor_notify_ms,
})

if cfg.run then
  vim.api.nvim_create_autocmd('VimEnter', {
    once = true,
    callback = function()
      vim.schedule(function()
        dofile(cfg.run)
      end)
    end,
  })
end
