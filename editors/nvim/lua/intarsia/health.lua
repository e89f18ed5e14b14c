-- :checkhealth intarsia
local M = {}

function M.check()
  local h = vim.health
  h.start('intarsia')
  if vim.fn.has('nvim-0.11') == 1 then
    h.ok('Neovim ' .. tostring(vim.version()))
  else
    h.error('Neovim 0.11 or later is needed')
  end
  local intarsia = require('intarsia')
  local cfg = intarsia.config
  local exe = type(cfg.cmd) == 'table' and cfg.cmd[1] or nil
  if exe and vim.fn.executable(exe) == 1 then
    h.ok('server command: ' .. table.concat(cfg.cmd, ' '))
  else
    h.error('server command not found: ' .. tostring(exe), { 'pip install intarsia, or set cmd in setup{}' })
  end
  h.info('server log: ' .. (cfg.log_file and tostring(cfg.log_file) or 'stderr (in lsp.log)'))
  h.info('ghost text: ' .. (intarsia.native and 'vim.lsp.inline_completion' or 'extmarks'))
  local delay = require('intarsia.cursor').config.delay_ms
  h.info('cursor notification (intarsia/didMoveCursor): ' .. (delay > 0 and (delay .. ' ms after a move') or 'off'))
  local clients = vim.lsp.get_clients({ name = cfg.name })
  if #clients == 0 then
    h.warn('no Intarsia server is running (open a file of a configured filetype)')
  end
  for _, c in ipairs(clients) do
    h.ok(('client %d: root %s, position encoding %s'):format(c.id, tostring(c.root_dir), c.offset_encoding))
  end
end

return M
