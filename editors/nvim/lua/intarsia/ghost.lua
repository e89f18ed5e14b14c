-- Ghost text for Neovim versions without vim.lsp.inline_completion (0.11): requests
-- textDocument/inlineCompletion (debounced, on TextChangedI/CursorMovedI/InsertEnter), shows the first item as
-- extmarks (the first line inline at the cursor, the others as virtual lines below), keeps it while the user
-- types the same characters, clears it when the cursor moves elsewhere or insert mode ends, and accepts all of
-- it, its next line or its next word; accepts are reported to the server (intarsia.accept / acceptPartial).

local api = vim.api

local M = {}

M.ns = api.nvim_create_namespace('intarsia')

--- Set by require('intarsia').setup().
M.config = {
  client_name = 'intarsia',
  debounce_ms = 75,
  auto_trigger = true,
  hl_group = 'IntarsiaSuggestion',
}

--- Per buffer: timer, request_id, client_id, sugg (the suggestion shown), counters.
---@type table<integer, table>
local states = {}

--- Counters for :IntarsiaStatus and tests.
M.stats = { requests = 0, responses = 0, shown = 0, accepted = 0, partial = 0, dropped = 0 }

local INVOKED, AUTOMATIC = 1, 2 -- lsp.InlineCompletionTriggerKind

local function state(bufnr)
  local s = states[bufnr]
  if not s then
    s = {}
    states[bufnr] = s
  end
  return s
end

local function client_for(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.config.client_name })[1]
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function in_insert_mode()
  return api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

local function stop_timer(s)
  local t = s.timer
  s.timer = nil
  if t and not t:is_closing() then
    t:stop()
    t:close()
  end
end

local function cancel_request(s)
  if s.request_id and s.client_id then
    local c = vim.lsp.get_client_by_id(s.client_id)
    if c then
      c:cancel_request(s.request_id)
    end
  end
  s.request_id = nil
end

--- The lines of `text` (LF or CRLF line breaks).
local function split_lines(text)
  local lines = vim.split(text, '\n', { plain = true })
  for i, l in ipairs(lines) do
    lines[i] = l:gsub('\r$', '')
  end
  return lines
end

--- Byte column of an LSP `character` in `line`.
local function byte_col(line, character, encoding)
  local ok, b = pcall(vim.str_byteindex, line, encoding, character, false)
  return ok and b or #line
end

local function render(bufnr)
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local g = states[bufnr] and states[bufnr].sugg
  if not g then
    return
  end
  local hl = M.config.hl_group
  local tab = string.rep(' ', vim.bo[bufnr].tabstop)
  local lines = split_lines(g.text)
  local opts = { hl_mode = 'combine' }
  if lines[1] ~= '' then
    opts.virt_text = { { (lines[1]:gsub('\t', tab)), hl } }
    opts.virt_text_pos = 'inline'
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      opts.virt_lines[#opts.virt_lines + 1] = { { (lines[i]:gsub('\t', tab)), hl } }
    end
  end
  g.extmark = api.nvim_buf_set_extmark(bufnr, M.ns, g.row, g.col, opts)
end

--- Remove the ghost text of `bufnr` (pending requests go on).
function M.clear(bufnr)
  local s = states[bufnr]
  if s then
    s.sugg = nil
  end
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

--- Remove the ghost text and cancel the pending request and timer of `bufnr`.
function M.reset(bufnr)
  local s = states[bufnr]
  if s then
    stop_timer(s)
    cancel_request(s)
  end
  M.clear(bufnr)
end

--- Forget `bufnr` (detached or wiped).
function M.detach(bufnr)
  M.reset(bufnr)
  states[bufnr] = nil
end

--- The suggestion shown in `bufnr`: {text, row, col, id} (0-based row, byte col), or nil.
function M.current(bufnr)
  local g = states[bufnr or api.nvim_get_current_buf()]
  g = g and g.sugg
  if not g then
    return nil
  end
  return { text = g.text, row = g.row, col = g.col, id = g.id }
end

local function on_result(bufnr, client, result, row, col, tick)
  M.stats.responses = M.stats.responses + 1
  if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr or not in_insert_mode() then
    M.stats.dropped = M.stats.dropped + 1
    return
  end
  local r, c = cursor()
  if r ~= row or c ~= col or api.nvim_buf_get_changedtick(bufnr) ~= tick then
    M.stats.dropped = M.stats.dropped + 1 -- the answer is for an earlier state of the buffer
    return
  end
  local items = type(result) == 'table' and (result.items or result) or {}
  local item = items[1]
  if type(item) ~= 'table' or type(item.insertText) ~= 'string' then
    -- Nothing (or a snippet, which the Intarsia server never sends): keep what is still valid.
    return
  end
  local text = item.insertText
  local end_col = col
  if type(item.range) == 'table' then
    local st, en = item.range.start, item.range['end']
    if st.line ~= row or en.line ~= row then
      M.stats.dropped = M.stats.dropped + 1
      return
    end
    local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
    local sc = byte_col(line, st.character, client.offset_encoding)
    local ec = byte_col(line, en.character, client.offset_encoding)
    local typed = line:sub(sc + 1, col)
    if sc > col or ec < col or text:sub(1, #typed) ~= typed then
      M.stats.dropped = M.stats.dropped + 1
      return
    end
    text = text:sub(#typed + 1)
    end_col = ec
  end
  if text == '' then
    M.clear(bufnr)
    return
  end
  local command = type(item.command) == 'table' and item.command or nil
  local args = command and command.arguments
  local id = type(args) == 'table' and type(args[1]) == 'table' and args[1].id or nil
  state(bufnr).sugg = {
    text = text,
    row = row,
    col = col,
    end_col = end_col,
    tick = tick,
    client_id = client.id,
    command = command,
    id = id,
    consumed = 0, -- characters of the item typed or accepted since it came
  }
  M.stats.shown = M.stats.shown + 1
  render(bufnr)
end

--- Ask the server for a suggestion at the cursor now (`invoked`: the user asked for it explicitly).
function M.request(bufnr, invoked)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local s = state(bufnr)
  stop_timer(s)
  cancel_request(s)
  local client = client_for(bufnr)
  if not client or api.nvim_get_current_buf() ~= bufnr then
    return false
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = invoked and INVOKED or AUTOMATIC }
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local id
  local ok, rid = client:request('textDocument/inlineCompletion', params, function(err, result)
    if s.request_id ~= id then
      return -- superseded by a later request
    end
    s.request_id = nil
    if err then
      if err.code ~= -32800 then -- RequestCancelled
        vim.notify_once('Intarsia: inline completion failed: ' .. tostring(err.message), vim.log.levels.WARN)
      end
      return
    end
    on_result(bufnr, client, result, row, col, tick)
  end, bufnr)
  if ok then
    id = rid
    s.request_id = rid
    s.client_id = client.id
    M.stats.requests = M.stats.requests + 1
  end
  return ok
end

local function schedule_request(bufnr)
  local s = state(bufnr)
  stop_timer(s)
  local timer = vim.uv.new_timer()
  s.timer = timer
  timer:start(
    M.config.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if s.timer ~= timer then
        return
      end
      stop_timer(s)
      if api.nvim_buf_is_valid(bufnr) and api.nvim_get_current_buf() == bufnr and in_insert_mode() then
        M.request(bufnr, false)
      end
    end)
  )
end

--- TextChangedI / CursorMovedI / InsertEnter: keep, trim (typed through) or clear the suggestion, and ask
--- again after a pause when automatic suggestions are on.
function M.on_edit(bufnr)
  if not in_insert_mode() or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local s = state(bufnr)
  local g = s.sugg
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  if g then
    if row == g.row and col == g.col and tick == g.tick then
      return -- nothing moved (our own accept, or an event without a change)
    end
    if row == g.row and col > g.col and tick ~= g.tick then
      local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
      local typed = line:sub(g.col + 1, col)
      if #typed < #g.text and g.text:sub(1, #typed) == typed and not typed:find('\n', 1, true) then
        g.consumed = g.consumed + vim.fn.strchars(typed)
        g.text = g.text:sub(#typed + 1)
        g.end_col = col + (g.end_col - g.col)
        g.col = col
        g.tick = tick
        render(bufnr)
        return
      end
    end
    M.clear(bufnr)
  end
  if M.config.auto_trigger and vim.b[bufnr].intarsia_enabled ~= false and vim.g.intarsia_enabled ~= false then
    schedule_request(bufnr)
  end
end

--- The next word of `text`: leading white space (line breaks too) and a run of word characters, or one
--- other character.
function M.next_word(text)
  local _, e = text:find('^%s*[%w_\128-\255]+')
  if not e then
    _, e = text:find('^%s*[^%w_%s\128-\255]')
  end
  return text:sub(1, e or #text)
end

--- The rest of the current line of `text`, or, when `text` starts with a line break, the break and the line
--- after it.
function M.next_line(text)
  local nl = text:find('\n', 1, true)
  if not nl then
    return text
  end
  if text:sub(1, nl - 1):match('^\r?$') then
    local nl2 = text:find('\n', nl + 1, true)
    return nl2 and text:sub(1, nl2 - 1) or text
  end
  return text:sub(1, nl - 1)
end

local function execute(client, bufnr, command)
  client:exec_cmd(command, { bufnr = bufnr }, function(err)
    if err then
      vim.notify('Intarsia: ' .. command.command .. ' failed: ' .. tostring(err.message), vim.log.levels.WARN)
    end
  end)
end

--- Accept the suggestion shown in the current buffer: kind 'all' (default), 'line' or 'word'.
--- Returns false when there is nothing to accept at the cursor.
function M.accept(kind, bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local s = states[bufnr]
  local g = s and s.sugg
  if not g then
    return false
  end
  local row, col = cursor()
  if row ~= g.row or col ~= g.col or api.nvim_buf_get_changedtick(bufnr) ~= g.tick then
    M.clear(bufnr)
    return false
  end
  local part = g.text
  if kind == 'word' then
    part = M.next_word(g.text)
  elseif kind == 'line' then
    part = M.next_line(g.text)
  end
  local whole = #part >= #g.text or g.text:sub(#part + 1):match('^%s*$') ~= nil
  if whole then
    part = g.text
  end
  stop_timer(s)
  cancel_request(s)
  local lines = split_lines(part)
  api.nvim_buf_set_text(bufnr, g.row, g.col, g.row, whole and g.end_col or g.col, lines)
  local nrow = g.row + #lines - 1
  local ncol = (#lines == 1 and g.col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { nrow + 1, ncol })
  g.consumed = g.consumed + vim.fn.strchars(part)
  local client = vim.lsp.get_client_by_id(g.client_id)
  if whole then
    M.stats.accepted = M.stats.accepted + 1
    M.clear(bufnr)
    if client and g.command then
      execute(client, bufnr, g.command)
    end
  else
    M.stats.partial = M.stats.partial + 1
    if client and g.id then
      execute(client, bufnr, {
        title = 'Intarsia: suggestion partly accepted',
        command = 'intarsia.acceptPartial',
        arguments = { { id = g.id, acceptedLength = g.consumed } },
      })
    end
    g.text = g.text:sub(#part + 1)
    g.row, g.col, g.end_col = nrow, ncol, ncol
    g.tick = api.nvim_buf_get_changedtick(bufnr)
    render(bufnr)
  end
  return true
end

--- Attach the autocommands of the extmark path to `bufnr`.
function M.attach(bufnr)
  local group = api.nvim_create_augroup('intarsia.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd({ 'TextChangedI', 'CursorMovedI', 'InsertEnter' }, {
    group = group,
    buffer = bufnr,
    desc = 'Intarsia: update the suggestion',
    callback = function()
      M.on_edit(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    desc = 'Intarsia: clear the suggestion',
    callback = function()
      M.reset(bufnr)
    end,
  })
  api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      M.detach(bufnr)
      pcall(api.nvim_del_augroup_by_id, group)
    end,
  })
  state(bufnr)
end

--- Remove the autocommands and the ghost text of `bufnr`.
function M.unattach(bufnr)
  pcall(api.nvim_del_augroup_by_name, 'intarsia.ghost.' .. bufnr)
  M.detach(bufnr)
end

return M
