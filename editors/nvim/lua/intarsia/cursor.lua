-- Cursor notifications: `intarsia/didMoveCursor` tells the server where the cursor is, so that it can pre-compute
-- ("pre-warm") the suggestion there while the user reads, before they type.
--
-- On CursorMoved, CursorMovedI and BufEnter of a buffer the Intarsia client is attached to, one vim.uv timer
-- (re)starts; when `delay_ms` (setup's `cursor_notify_ms`, default 120) has passed without another move
-- (trailing debounce, one pending timer), the notification goes out for the current window's buffer and cursor:
--
--   { textDocument = { uri = <the buffer's URI>, version = <vim.lsp.util.buf_versions[bufnr]> },
--     position = { line = <0-based>, character = <in the client's offset_encoding> } }
--
-- The version is the one Neovim's LSP client sent for the buffer (0.11: vim.lsp.util.buf_versions, set to
-- b:changedtick on every change, 0 at didOpen); Client:notify() sends the pending didChange first, so the
-- server has seen it. The same params as the last ones sent to a client are not sent again. delay_ms = 0
-- disables the notification.

local api = vim.api

local M = {}

M.METHOD = 'intarsia/didMoveCursor'

--- Set by require('intarsia').setup().
M.config = {
  client_name = 'intarsia',
  delay_ms = 120,
}

--- Notifications sent (for :IntarsiaStatus and tests).
M.stats = { sent = 0 }

local timer ---@type uv.uv_timer_t?
--- Per client id: the key of the params last sent.
local last = {}

local function client_for(bufnr)
  local c = vim.lsp.get_clients({ bufnr = bufnr, name = M.config.client_name })[1]
  if c and c.initialized and not c:is_stopped() then
    return c
  end
end

--- The params for window `win` (0: current) as `client` would get them; nil when its buffer is not attached.
function M.params(client, win)
  win = (win == nil or win == 0) and api.nvim_get_current_win() or win
  local bufnr = api.nvim_win_get_buf(win)
  if not vim.lsp.buf_is_attached(bufnr, client.id) then
    return nil
  end
  local p = vim.lsp.util.make_position_params(win, client.offset_encoding)
  return {
    textDocument = { uri = p.textDocument.uri, version = vim.lsp.util.buf_versions[bufnr] },
    position = { line = p.position.line, character = p.position.character },
  }
end

local function key(params)
  return ('%s\n%d\n%d\n%d'):format(
    params.textDocument.uri,
    params.textDocument.version,
    params.position.line,
    params.position.character
  )
end

--- Send the notification for the current window now (what the timer does). Returns the params sent, or nil
--- when nothing was sent (no Intarsia client on the buffer, the same params as last time, the client gone).
function M.send_now()
  local bufnr = api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client then
    return nil
  end
  local params = M.params(client, 0)
  if not params then
    return nil
  end
  local k = key(params)
  if last[client.id] == k then
    return nil
  end
  -- Client:notify sends the buffer's pending didChange first (its version is params.textDocument.version).
  if client:notify(M.METHOD, params) then
    last[client.id] = k
    M.stats.sent = M.stats.sent + 1
    return params
  end
  return nil
end

--- Stop the pending notification, if any.
function M.cancel()
  if timer and not timer:is_closing() then
    timer:stop()
  end
end

--- Whether a notification waits for its pause to end.
function M.pending()
  return timer ~= nil and not timer:is_closing() and timer:is_active()
end

--- The cursor moved (or the buffer was entered): send the notification `delay_ms` from now, unless it moves
--- again before (one timer for all buffers; the buffer and cursor are read when it fires).
function M.schedule()
  local delay = tonumber(M.config.delay_ms) or 0
  if delay <= 0 then
    M.cancel()
    return
  end
  if not timer or timer:is_closing() then
    timer = assert(vim.uv.new_timer())
  end
  timer:stop()
  timer:start(delay, 0, function()
    vim.schedule(M.send_now)
  end)
end

--- Forget what was sent to `client_id` (a stopped client), or to every client.
function M.forget(client_id)
  if client_id then
    last[client_id] = nil
  else
    last = {}
  end
end

--- The autocommands of `bufnr` (an Intarsia client attached to it).
function M.attach(bufnr)
  local group = api.nvim_create_augroup('intarsia.cursor.' .. bufnr, { clear = true })
  api.nvim_create_autocmd({ 'CursorMoved', 'CursorMovedI', 'BufEnter' }, {
    group = group,
    buffer = bufnr,
    desc = 'Intarsia: tell the server where the cursor is (intarsia/didMoveCursor)',
    callback = M.schedule,
  })
  api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      pcall(api.nvim_del_augroup_by_id, group)
    end,
  })
  if api.nvim_get_current_buf() == bufnr then
    M.schedule() -- the buffer was entered before the client attached
  end
end

function M.detach(bufnr)
  pcall(api.nvim_del_augroup_by_name, 'intarsia.cursor.' .. bufnr)
end

return M
